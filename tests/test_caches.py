"""Every cache edgekd reads back is checked first: the demo teacher and dequantised GGUF
folders (the teacher-output caches and the matmul peak have tests beside their code)."""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest

from conftest import LABELS, make_classifier, make_rows, make_tokenizer
from edgekd.tasks import text_demo as demo_module
from edgekd.data import TextDataset
from edgekd.integrity import RECORD, corruption, seal
from edgekd.lm import models as lm_models
from lm_tiny import make_llama, make_lm_tokenizer


def _one_line(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _overwrite_weights(folder):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64] + b"\x07" * 64)  # same size, other values
    return "model.safetensors does not match its checksum"


def _truncate_weights(folder):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return "model.safetensors does not match its checksum"


def _remove_config(folder):
    (folder / "config.json").unlink()
    return "config.json is missing"


def _remove_record(folder):
    (folder / RECORD).unlink()  # killed before its checksums were written, or built by an older edgekd
    return f"it has no {RECORD}"


DAMAGES = pytest.mark.parametrize("damage", [_overwrite_weights, _truncate_weights, _remove_config, _remove_record],
                                  ids=["overwritten", "truncated", "missing", "no-record"])


def test_a_sealed_folder_is_clean_until_one_byte_changes(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("b")
    seal(tmp_path)
    assert corruption(tmp_path) is None
    (tmp_path / "sub" / "b.txt").write_text("c")
    assert corruption(tmp_path) == "sub/b.txt does not match its checksum"


# ---------------------------------------------------------------------------- demo teacher

@pytest.fixture
def tiny_minilm(tmp_path, monkeypatch):
    """The demo's teacher recipe on a tiny BERT in place of MiniLM, with counted fine-tunings."""
    source = tmp_path / "minilm"
    make_classifier("bert", layers=2, num_labels=len(LABELS)).save_pretrained(source)
    make_tokenizer().save_pretrained(source)
    monkeypatch.setattr(demo_module, "minilm_path", lambda: source)
    runs = []
    fine_tune = demo_module._fine_tune_teacher
    monkeypatch.setattr(demo_module, "_fine_tune_teacher", lambda *a, **k: (runs.append(1), fine_tune(*a, **k)))
    rows = make_rows(24, seed=3)
    data = TextDataset([r["text"] for r in rows], [LABELS.index(r["label"]) for r in rows], list(LABELS))
    splits = {"train": data, "validation": data}
    recipe = replace(demo_module.TEACHER_RECIPE, max_length=32, batch_size=8)
    return lambda: demo_module.build_teacher(splits, cache=tmp_path / "cache", recipe=recipe,
                                             show_progress=False), runs


@DAMAGES
def test_a_damaged_demo_teacher_is_said_in_one_line_and_fine_tuned_again(damage, tiny_minilm, capsys):
    build, runs = tiny_minilm
    folder = build()
    assert runs == [1] and corruption(folder) is None
    weights = (folder / "model.safetensors").read_bytes()
    assert build() == folder and runs == [1]  # sound: reused
    reason = damage(folder)
    capsys.readouterr()
    assert build() == folder and runs == [1, 1]
    lines = [line for line in _one_line(capsys) if "corrupt" in line]
    assert len(lines) == 1 and "is corrupt" in lines[0] and reason in lines[0] and "rebuilding" in lines[0]
    assert corruption(folder) is None
    assert (folder / "model.safetensors").read_bytes() == weights  # the seeded fine-tuning again


# ---------------------------------------------------------------------------- GGUF

@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A .gguf path whose dequantisation (transformers' reader) is replaced by a tiny Llama."""
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF stand-in")
    reads = []

    def read(gguf_path):
        reads.append(gguf_path)
        return make_llama(layers=1).eval(), make_lm_tokenizer()

    monkeypatch.setattr(lm_models, "_read_gguf", read)
    return path, reads


@DAMAGES
def test_a_damaged_gguf_cache_is_said_in_one_line_and_dequantised_again(damage, fake_gguf, capsys):
    path, reads = fake_gguf
    folder = lm_models.dequantised_gguf(path)
    assert len(reads) == 1 and corruption(folder) is None
    assert oct(os.stat(folder / "model.safetensors").st_mode & 0o777) != "0o600"
    assert lm_models.dequantised_gguf(path) == folder and len(reads) == 1  # sound: reused
    reason = damage(folder)
    capsys.readouterr()
    assert lm_models.dequantised_gguf(path) == folder and len(reads) == 2
    lines = [line for line in _one_line(capsys) if "corrupt" in line]  # beside transformers' save bar
    assert len(lines) == 1 and "dequantised GGUF cache" in lines[0] and reason in lines[0]
    assert corruption(folder) is None
    lm_models.load_causal_lm(path)  # loads


def test_a_folder_verified_in_this_process_is_not_hashed_again_until_a_file_changes(tmp_path, monkeypatch):
    from edgekd import integrity

    (tmp_path / "weights.bin").write_bytes(b"x" * 1000)
    seal(tmp_path)
    hashed = []
    digest = integrity.file_digest
    monkeypatch.setattr(integrity, "file_digest", lambda path: (hashed.append(path), digest(path))[1])
    assert integrity.trusted(tmp_path, what="cache") and len(hashed) == 1
    assert integrity.trusted(tmp_path, what="cache") and len(hashed) == 1  # unchanged: trusted as verified
    time.sleep(0.05)  # past the file system's timestamp granularity
    (tmp_path / "weights.bin").write_bytes(b"y" * 1000)  # same size, new contents
    assert not integrity.trusted(tmp_path, what="cache") and not tmp_path.exists()
