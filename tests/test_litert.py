"""LiteRT (.tflite): tiny BERT, ViT and ResNet classifiers converted by litert-torch, run by the
ai-edge-litert interpreter, checked, described in the manifest and benched; refusals in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("litert_torch", reason="install edgekd[litert]")
pytest.importorskip("ai_edge_litert", reason="install edgekd[litert]")

from conftest import make_classifier, make_rows, make_tokenizer, run_cli, write_jsonl  # noqa: E402
from edgekd.errors import UserError  # noqa: E402
from edgekd.sessions import LiteRTSession  # noqa: E402
from edgekd.exporting.parity import random_batches  # noqa: E402
from edgekd.exporting.stage import export  # noqa: E402
from edgekd.models import load_classifier, save_model  # noqa: E402
from edgekd.targets import load_target, load_targets_for  # noqa: E402

MAX_LENGTH = 48


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    student = tmp_path_factory.mktemp("litert-student")
    save_model(make_classifier("bert", layers=2, hidden=64), make_tokenizer(), student)
    rows = write_jsonl(make_rows(24, seed=2), tmp_path_factory.mktemp("rows") / "test.jsonl")
    out = tmp_path_factory.mktemp("litert")
    artifacts = export(student, targets=[load_target("litert"), load_target("litert-int8")], out=out,
                       validation=_data(student, rows), max_length=MAX_LENGTH)
    return student, out, {artifact.target: artifact for artifact in artifacts}


def test_litert_fp32_matches_pytorch_and_int8_is_smaller_within_its_budget(exported):
    student, out, by_target = exported
    fp32, int8 = by_target["litert"], by_target["litert-int8"]
    assert fp32.model_file.name == "model.tflite" and fp32.model_file.read_bytes()[4:8] == b"TFL3"
    assert fp32.parity.max_abs_diff <= 1e-4 and fp32.parity.passed
    assert int8.parity.agreement >= 0.9 and 0 < int8.parity.max_abs_diff < 0.1  # quantised, and close
    assert int8.size_bytes < 0.6 * fp32.size_bytes
    assert int8.accuracy is not None and int8.accuracy.passed
    manifest = json.loads((out / "litert-int8" / "edgekd.json").read_text())
    assert manifest["format"] == "tflite" and manifest["precision"] == "int8-dynamic"
    assert manifest["exporter"] == "litert-torch" and manifest["converter"].startswith("litert-torch ")
    assert manifest["inputs"] == {"input_ids": [1, MAX_LENGTH], "attention_mask": [1, MAX_LENGTH],
                                  "token_type_ids": [1, MAX_LENGTH]}
    assert manifest["quantization"]["per_channel"] is True


def test_the_interpreter_pads_shorter_rows_and_refuses_longer_ones(exported):
    student, _, by_target = exported
    model, tokenizer = load_classifier(student)
    session = LiteRTSession(by_target["litert"].model_file)
    assert session.sequence_length == MAX_LENGTH
    import torch

    (feeds,) = random_batches(tokenizer, session.input_names, seed=5, shapes=((3, 11),))
    with torch.no_grad():
        expected = model(**{name: torch.from_numpy(value) for name, value in feeds.items()}).logits.numpy()
    (logits,) = session.run(["logits"], feeds)
    assert logits.shape == (3, model.config.num_labels) and np.abs(logits - expected).max() < 1e-4
    (longer,) = random_batches(tokenizer, session.input_names, seed=5, shapes=((1, MAX_LENGTH + 1),))
    with pytest.raises(UserError, match=f"takes {MAX_LENGTH} tokens and was given {MAX_LENGTH + 1}"):
        session.run(["logits"], longer)


def test_bench_times_the_tflite_rows_with_the_interpreter(exported, test_file, tmp_path):
    from edgekd.benchmarking.classifier import bench

    student, out, _ = exported
    report = bench(teacher=student, student=None, artifacts=out, data=_data(student, test_file),
                   max_length=MAX_LENGTH, sequence_length=MAX_LENGTH, threads=1, repeats=3, show_progress=False,
                   throughput_batch_size=0, measure_memory=False, measure_roofline=False)
    rows = {row["name"]: row for row in report["rows"]}
    assert rows["teacher/litert"]["runtime"] == "litert fp32" and rows["teacher/litert"]["format"] == "tflite"
    assert rows["teacher/litert-int8"]["runtime"] == "litert int8-dynamic"
    assert rows["teacher/litert"]["quality"]["agreement"] == 1.0
    assert rows["teacher/litert-int8"]["latency"]["p50_ms"] > 0
    with pytest.raises(UserError, match=f"takes inputs of {MAX_LENGTH} tokens, fixed when it was converted"):
        bench(teacher=student, student=None, artifacts=out, data=_data(student, test_file), max_length=MAX_LENGTH,
              sequence_length=MAX_LENGTH * 2, threads=1, repeats=3, show_progress=False, throughput_batch_size=0,
              measure_memory=False, measure_roofline=False)


def _data(student, test_file):
    from edgekd.data import Columns, load_file

    model, _ = load_classifier(student)
    return load_file(test_file, columns=Columns(), label2id=model.config.label2id)


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_image_classifiers_convert_at_their_input_size(tmp_path, kind):
    from test_vision import pictures, save, tiny

    student = save(tiny(kind), tmp_path / "student")
    fp32, int8 = export(student, targets=load_targets_for(["litert", "litert-int8"], "image-classification"),
                        out=tmp_path / "out", validation=pictures(), task="image-classification")
    assert fp32.parity.max_abs_diff <= 1e-4 and int8.accuracy is not None
    manifest = json.loads((tmp_path / "out" / "litert" / "edgekd.json").read_text())
    assert manifest["inputs"] == {"pixel_values": [1, 3, 32, 32]} and manifest["task"] == "image-classification"
    session = LiteRTSession(fp32.model_file)
    pixels = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert session.run(["logits"], {"pixel_values": pixels})[0].shape == (2, 3)


def test_refusals_are_one_line(tmp_path, student_dir):
    with pytest.raises(UserError, match="target 'litert' does not apply to causal-lm models"):
        load_targets_for(["litert"], "causal-lm")
    result = run_cli("export", student_dir, "--target", "litert", "--with-tokenizer", "--out", tmp_path / "e")
    assert result.exit_code != 0
    assert "--with-tokenizer serves ONNX and .ort targets; litert is a LiteRT model" in result.output
    assert not (tmp_path / "e").exists()


def test_the_terminal_stays_quiet_without_debug(student_dir, tmp_path):
    # a real process: the converter's prints, bars and absl/TensorFlow Lite native lines stay off the terminal
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "edgekd", "export", str(student_dir), "--target", "litert",
                             "--target", "litert-int8", "--max-length", "32", "--out", str(tmp_path / "e")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == ""
    assert "exported to" in result.stdout and "LiteRT-Torch" not in result.stdout


def test_verify_arm64_says_why_a_tflite_is_checked_on_x86_only(exported, tmp_path):
    student, _, _ = exported
    (artifact,) = export(student, targets=[load_target("litert")], out=tmp_path / "v", verify=("arm64",),
                         max_length=16)
    manifest = json.loads((artifact.folder / "edgekd.json").read_text())
    assert manifest["verified"]["arm64"]["passed"] is None
    assert "no Linux aarch64 wheel" in manifest["verified"]["arm64"]["note"]
