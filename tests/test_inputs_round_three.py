"""Faults a new user met (round three of bad inputs): data lost, input read wrong, valid
input refused. Each is one actionable line, or the input read as the user meant it."""

from __future__ import annotations

import hashlib
import json

from conftest import assert_clean_error, make_classifier, make_rows, make_tokenizer, run_cli, write_jsonl


def _digest(folder) -> str:
    return hashlib.sha256(b"".join(path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file())).hexdigest()


def test_distill_never_writes_over_its_own_teacher(teacher_dir, train_file, tmp_path):
    before = _digest(teacher_dir)
    for out in (teacher_dir, teacher_dir.parent):
        result = run_cli("distill", "--teacher", teacher_dir, "--data", train_file, "--out", out, "--overwrite",
                         "--student-layers", "1", "--epochs", "1", "--quiet")
        assert_clean_error(result, "must not overlap what the run reads")
    assert _digest(teacher_dir) == before


def test_distill_never_writes_over_its_data(teacher_dir, tmp_path):
    (tmp_path / "runs").mkdir()
    data = write_jsonl(make_rows(40), tmp_path / "runs" / "train.jsonl")
    result = run_cli("distill", "--teacher", teacher_dir, "--data", data, "--out", tmp_path / "runs", "--overwrite",
                     "--student-layers", "1", "--quiet")
    assert_clean_error(result, "--out .* holds the data")
    assert data.is_file()


def test_export_never_writes_over_its_student(student_dir, tmp_path):
    import shutil

    student = shutil.copytree(student_dir, tmp_path / "onnx-fp32")  # a student folder named like a target
    before = _digest(student)
    result = run_cli("export", student, "--target", "onnx-fp32", "--out", tmp_path, "--overwrite")
    assert_clean_error(result, "onnx-fp32 is the student")
    assert _digest(student) == before


def test_a_csv_with_a_byte_order_mark_and_a_long_field_reads_as_written(tmp_path):
    from edgekd.data import read_rows

    long_text = "word " * 40_000  # 200 kB in one field, past csv's default limit
    path = tmp_path / "excel.csv"
    path.write_text(f"text,label\n{long_text},positive\nshort,negative\n", encoding="utf-8-sig")
    rows = read_rows(path)
    assert list(rows[0]) == ["text", "label"] and rows[0]["text"] == long_text and rows[1]["label"] == "negative"


def test_a_causal_lm_text_that_is_null_is_refused_by_row(tmp_path):
    from edgekd.errors import UserError
    from edgekd.lm.data import read_texts

    path = tmp_path / "texts.jsonl"
    path.write_text(json.dumps({"text": "a real text"}) + "\n" + json.dumps({"text": None}) + "\n")
    try:
        read_texts(path)
    except UserError as error:
        assert "row 2: column 'text' is empty" in str(error)
    else:
        raise AssertionError("a null text was read as a text")


def test_a_teacher_saved_without_its_head_is_refused_by_name(train_file, tmp_path):
    from safetensors.torch import load_file, save_file

    teacher = tmp_path / "base-checkpoint"
    make_classifier("bert", layers=2).save_pretrained(teacher)
    make_tokenizer().save_pretrained(teacher)
    weights = load_file(teacher / "model.safetensors")
    save_file({name: value for name, value in weights.items() if name.startswith("bert.")},
              teacher / "model.safetensors", metadata={"format": "pt"})
    result = run_cli("distill", "--teacher", teacher, "--data", train_file, "--out", tmp_path / "s", "--quiet")
    assert_clean_error(result, "no weights for its classification head \\(classifier.bias, classifier.weight\\)")
    assert not (tmp_path / "s").exists()


def test_a_head_for_other_labels_than_the_config_names_is_refused_by_name(train_file, tmp_path):
    teacher = tmp_path / "three-labels"
    make_classifier("bert", layers=2, num_labels=3).save_pretrained(teacher)
    make_tokenizer().save_pretrained(teacher)
    config = json.loads((teacher / "config.json").read_text())
    config.update(id2label={"0": "no", "1": "yes"}, label2id={"no": 0, "yes": 1})  # a label dropped by hand
    (teacher / "config.json").write_text(json.dumps(config))
    result = run_cli("distill", "--teacher", teacher, "--data", train_file, "--out", tmp_path / "s", "--quiet")
    assert_clean_error(result, "head was trained on 3 labels .*classifier.weight has shape \\[3, 32\\].* names 2; "
                               "make id2label and label2id name every label")
    assert "ignore_mismatched_sizes" not in result.output and "LOAD REPORT" not in result.output
    assert not (tmp_path / "s").exists()


def _read_one(path):
    from edgekd.vision.data import decode

    return decode(path, path.name)


def test_a_16_bit_picture_keeps_its_grey_levels(tmp_path):
    import numpy as np
    from PIL import Image

    path = tmp_path / "scan.png"
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(path)  # mid-grey in 16 bits
    picture = _read_one(path)
    assert picture.mode == "L" and abs(int(np.asarray(picture).mean()) - 128) <= 1  # not clipped to white


def test_an_exif_rotated_photo_is_read_upright(tmp_path):
    from PIL import Image

    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: a viewer turns it 90 degrees
    Image.new("RGB", (40, 20), "red").save(path, exif=exif)
    assert _read_one(path).size == (20, 40)


def test_a_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    import pytest
    from PIL import Image

    from edgekd.errors import UserError

    path = tmp_path / "huge.png"
    Image.new("L", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4,096 pixels: past twice the limit
    with pytest.raises(UserError, match="huge.png is too large to read safely"):
        _read_one(path)


def test_a_refused_tokenizer_leaves_no_folder_behind(tmp_path):
    from lm_tiny import make_byte_level_tokenizer

    student = tmp_path / "student"
    make_classifier("roberta", layers=2, vocab_size=300).save_pretrained(student)
    make_byte_level_tokenizer().save_pretrained(student)
    result = run_cli("export", student, "--target", "onnx-fp32", "--with-tokenizer", "--out", tmp_path / "out")
    assert_clean_error(result, "--with-tokenizer: the student's tokenizer .* cannot be reproduced")
    assert not (tmp_path / "out").exists()


def test_a_latency_budget_at_an_impossible_sequence_length_is_one_line(teacher_dir, train_file, tmp_path):
    for length in ("-5", "100000"):
        result = run_cli("distill", "--teacher", teacher_dir, "--data", train_file, "--out", tmp_path / "s",
                         "--latency-budget-ms", "5", "--sequence-length", length)
        assert_clean_error(result, f"--sequence-length {length} is out of range for this teacher; choose 2 to 130")


def test_a_layer_cut_keeps_per_layer_config_fields_with_the_kept_layers(tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from edgekd.models import select_layers

    config = AutoConfig.for_model("longformer", num_hidden_layers=4, hidden_size=32, num_attention_heads=4,
                                  intermediate_size=64, vocab_size=80, max_position_embeddings=130,
                                  attention_window=[4, 8, 12, 16], num_labels=3, pad_token_id=0)
    teacher = AutoModelForSequenceClassification.from_config(config).eval()
    student = select_layers(teacher, [0, 3])
    assert student.config.attention_window == [4, 16] and student.config.num_hidden_layers == 2
    student.save_pretrained(tmp_path / "student")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student")  # loads again
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    torch.testing.assert_close(reloaded(input_ids=ids).logits, student(input_ids=ids).logits)


def test_an_operation_count_that_fails_costs_the_report_nothing(teacher_dir, student_dir, tmp_path, monkeypatch):
    import edgekd
    import edgekd.benchmarking.roofline as roofline

    def broken(model, feeds):
        raise AttributeError("'NoneType' object has no attribute 'next_functions'")

    monkeypatch.setattr(roofline, "torch_operations", broken)
    report = edgekd.bench(teacher=str(teacher_dir), student=student_dir, data=make_rows(24, seed=3),
                          out=tmp_path / "bench", max_length=32, sequence_length=[32], repeats=2,
                          throughput_batch=0, memory=False, quiet=True, log=None)
    assert (tmp_path / "bench" / "report.json").is_file() and (tmp_path / "bench" / "report.md").is_file()
    assert all(row["efficiency"] is None for row in report.rows)
    assert "operation count of teacher not measured: 'NoneType' object has no attribute" in " ".join(
        report.data["warnings"])


def test_a_write_that_fails_leaves_no_temporary_behind(tmp_path, monkeypatch):
    import errno
    import pathlib

    import pytest

    from edgekd.errors import atomic_write_text

    real_write = pathlib.Path.write_text

    def full_disk(self, text, *args, **kwargs):
        real_write(self, text[:10], *args, **kwargs)  # part of it reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", full_disk)
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "report.json", "{" + " " * 1000 + "}")
    assert list(tmp_path.iterdir()) == []


def test_picture_folders_split_into_train_and_test_say_which_split_to_choose(tmp_path):
    import numpy as np
    from PIL import Image

    from edgekd.errors import UserError
    from edgekd.vision.data import load_images

    for split in ("train", "test"):
        for label in ("cat", "dog"):
            (tmp_path / split / label).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / split / label / "0.png")
    for default in ("validation", None):  # export's default split, and none at all
        try:
            load_images(tmp_path, label2id=None, default_split=default)
        except UserError as error:
            assert "is split into folders test/, train/ of class folders" in str(error)
            assert "choose one with --split" in str(error) and "has no images" not in str(error)
        else:
            raise AssertionError("split folders were read as classes")
    assert load_images(tmp_path, label2id=None, split="test").label_names == ["cat", "dog"]


def _swin_and_mobilevit():
    import transformers as t

    labels = dict(id2label={0: "a", 1: "b"}, label2id={"a": 0, "b": 1})
    swin = t.SwinForImageClassification(t.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2],
                                                     num_heads=[2, 4], window_size=4, **labels))
    mobilevit = t.MobileViTForImageClassification(t.MobileViTConfig(
        image_size=32, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 40], **labels))
    return swin.eval(), mobilevit.eval()


def test_student_config_on_swin_and_mobilevit_shrinks_or_says_why():
    import pytest
    import torch

    from edgekd.errors import UserError
    from edgekd.vision.models import shrunk_image_student

    swin, mobilevit = _swin_and_mobilevit()
    student = shrunk_image_student(swin, "width=0.5")
    assert student.config.embed_dim == 8 and student.config.hidden_size == swin.config.hidden_size // 2
    assert student(pixel_values=torch.rand(1, 3, 32, 32)).logits.shape == (1, 2)  # it runs
    with pytest.raises(UserError, match="width=0.3 makes stage 1 5 channels wide, not divisible by its 2 heads"):
        shrunk_image_student(swin, "width=0.3")
    with pytest.raises(UserError, match="'layers' does not apply to MobileViTForImageClassification .*no num_hidden"):
        shrunk_image_student(mobilevit, "layers=1")


def test_an_absurd_student_config_is_refused_before_memory_is_spent(teacher_dir, train_file, tmp_path):
    result = run_cli("distill", "--teacher", teacher_dir, "--data", train_file, "--out", tmp_path / "s",
                     "--student-config", "hidden=1000000,layers=1", "--student-init", "random", "--quiet")
    assert_clean_error(result, "makes a student of 5,000,[0-9,]+ parameters, more than the teacher's")
    assert not (tmp_path / "s").exists()


INTERRUPTING_DRIVER = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background test runner hands SIGINT ignored
import importlib
module = importlib.import_module(sys.argv[1])
name, number = sys.argv[2], int(sys.argv[3])
real = getattr(module, name)
def interrupted(*args, **kwargs):
    os.kill(os.getpid(), number)  # the signal arrives in the middle of the work
    time.sleep(30)
    return real(*args, **kwargs)
setattr(module, name, interrupted)
from edgekd.cli import main
sys.argv = ["edgekd"] + sys.argv[4:]
main()
"""


def _interrupt(tmp_path, where: str, number: int, *args) -> tuple[int, list[str]]:
    import subprocess
    import sys

    driver = tmp_path / "driver.py"
    driver.write_text(INTERRUPTING_DRIVER)
    module, name = where.rsplit(".", 1)
    process = subprocess.run([sys.executable, str(driver), module, name, str(number), *map(str, args)],
                             capture_output=True, text=True, timeout=300)
    return process.returncode, [line for line in process.stderr.splitlines() if line.strip()]


def _children_of_a_gone_run(marker: str) -> list[str]:
    """Command lines of processes still running that name `marker` (the run's own folder)."""
    import os
    from pathlib import Path

    found = []
    for process in Path("/proc").iterdir():
        try:
            if process.name.isdigit() and int(process.name) != os.getpid():
                command = (process / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found += [command] if marker in command or marker in _spec_of(command) else []
        except OSError:
            continue
    return found


def _spec_of(command: str) -> str:
    from pathlib import Path

    spec = command.split()[-1] if command.strip() else ""
    try:
        return Path(spec).read_text()[:2000] if spec.endswith(".json") else ""
    except OSError:
        return ""


import pytest  # noqa: E402


@pytest.mark.parametrize("number, code, name", [(15, 143, "SIGTERM"), (2, 130, "Ctrl-C")])
def test_export_and_bench_stop_on_sigterm_and_ctrl_c_in_one_line_with_nothing_half_written(
        student_dir, teacher_dir, test_file, tmp_path, number, code, name):
    import time

    out = tmp_path / "export"
    status, lines = _interrupt(tmp_path, "edgekd.exporting.artifact.write_manifest", number,
                               "export", student_dir, "--target", "onnx-fp32", "--out", out, "--quiet")
    assert status == code and lines == [f"edgekd export was interrupted ({name}); nothing half-written was kept; "
                                        "rerun it to start again"], lines
    assert not out.exists() or list(out.iterdir()) == []  # no target folder, no .partial staging folder
    assert run_cli("export", student_dir, "--target", "onnx-fp32", "--out", out, "--quiet").exit_code == 0

    report = tmp_path / "report"
    status, lines = _interrupt(tmp_path, "edgekd.benchmarking.classifier._all_logits", number,
                               "bench", "--teacher", teacher_dir, "--student", student_dir, "--artifacts", out,
                               "--data", test_file, "--out", report, "--repeats", "2", "--quiet")
    assert status == code and lines == [f"edgekd bench was interrupted ({name}); nothing half-written was kept; "
                                        "rerun it to start again"], lines
    assert not report.exists() or list(report.iterdir()) == []
    time.sleep(1)  # the memory probes die with their parent
    assert _children_of_a_gone_run(str(student_dir)) == []


def test_paths_and_class_names_outside_ascii_serve_every_command(teacher_dir, student_dir, train_file, tmp_path):
    import shutil

    import numpy as np
    from PIL import Image

    root = tmp_path / "données é 学生"
    teacher, data = shutil.copytree(teacher_dir, root / "enseignant ü"), shutil.copy(train_file, root / "entraîné.jsonl")
    assert run_cli("distill", "--teacher", teacher, "--data", data, "--out", root / "élève", "--student-layers", "1",
                   "--epochs", "1", "--quiet").exit_code == 0
    exported = run_cli("export", root / "élève", "--target", "onnx-int8", "--target", "ort-mobile", "--with-tokenizer",
                       "--out", root / "exporté", "--quiet")
    assert exported.exit_code == 0, exported.output
    bench = run_cli("bench", "--teacher", teacher, "--student", root / "élève", "--artifacts", root / "exporté",
                    "--data", data, "--out", root / "rapport", "--repeats", "2", "--quiet")
    assert bench.exit_code == 0, bench.output
    rows = json.loads((root / "rapport" / "report.json").read_text(encoding="utf-8"))["rows"]
    assert {row["name"] for row in rows} == {"teacher", "student", "student/onnx-int8", "student/ort-mobile",
                                           "student/onnx-int8+tokenizer", "student/ort-mobile+tokenizer"}

    from edgekd.vision.data import load_images

    for label in ("chat é", "狗"):  # class folders and files named in any script
        (root / "photos" / label).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "photos" / label / "très 小.png")
    assert load_images(root / "photos", label2id=None).label_names == ["chat é", "狗"]


def test_an_export_that_fills_the_disk_is_one_line_and_leaves_no_target_folder(student_dir, tmp_path, monkeypatch):
    import errno

    import edgekd.exporting.artifact as artifact

    def full_disk(folder, **fields):  # the model file is written; the manifest finds the disk full
        (folder / "edgekd.json").write_text("{")
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "edgekd.json"))

    monkeypatch.setattr(artifact, "write_manifest", full_disk)
    out = tmp_path / "export"
    result = run_cli("export", student_dir, "--target", "onnx-fp32", "--out", out, "--quiet")
    assert_clean_error(result, "cannot write .*edgekd.json: No space left on device; free some space")
    assert not out.exists() or list(out.iterdir()) == []  # no onnx-fp32/ beside a model, no staging folder


def test_a_tokenizer_without_token_types_benches_a_model_that_takes_them(teacher_dir, student_dir, test_file,
                                                                        tmp_path):
    # RoBERTa-style tokenizers (CamemBERT, Data2Vec-text) make no token_type_ids; the BERT-style
    # graph still takes them: they are all zeros, as the model takes them when none are given
    import shutil

    teacher = shutil.copytree(teacher_dir, tmp_path / "teacher")
    student = shutil.copytree(student_dir, tmp_path / "student")
    for folder in (teacher, student):
        settings = json.loads((folder / "tokenizer_config.json").read_text())
        settings["model_input_names"] = ["input_ids", "attention_mask"]
        (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    assert run_cli("export", student, "--target", "onnx-fp32", "--out", tmp_path / "export", "--quiet").exit_code == 0
    result = run_cli("bench", "--teacher", teacher, "--student", student, "--artifacts", tmp_path / "export",
                     "--data", test_file, "--out", tmp_path / "report", "--repeats", "2", "--quiet")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads((tmp_path / "report" / "report.json").read_text())["rows"]}
    assert rows["student/onnx-fp32"]["quality"]["agreement"] == 1.0  # the same logits as PyTorch's


def test_a_teacher_that_fails_on_its_first_batch_is_refused_by_name_before_any_work(train_file, tmp_path):
    import pytest
    import torch

    import edgekd

    model, tokenizer = make_classifier("bert", layers=2), make_tokenizer()

    class NeedsBoxes(type(model)):  # like a layout model given text alone
        def forward(self, *args, **kwargs):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x30 and 32x8)")

    model.__class__ = NeedsBoxes
    with pytest.raises(edgekd.UserError, match="the teacher \\(NeedsBoxes\\) fails on its first batch \\(mat1 and "
                                               "mat2 .*\\); edgekd cannot distil this architecture"):
        edgekd.distill(teacher=(model, tokenizer), data=train_file, out=tmp_path / "s", student_layers="1",
                       cache_dir=tmp_path / "cache", log=None, quiet=True)
    assert not (tmp_path / "s").exists() and not (tmp_path / "cache").exists()  # no teacher cache was built
    del torch


def test_a_layer_cut_cuts_parallel_layer_lists_and_per_layer_tables_alike():
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from edgekd.models import cut_per_layer_fields, select_layers

    config = AutoConfig.for_model("xlm", n_layers=4, emb_dim=32, n_heads=4, vocab_size=80, num_labels=3,
                                  pad_token_id=0)
    teacher = AutoModelForSequenceClassification.from_config(config).eval()  # attentions, ffns, ... side by side
    student = select_layers(teacher, [0, 3])
    parts = student.transformer
    assert len(parts.attentions) == len(parts.ffns) == len(parts.layer_norm1) == len(parts.layer_norm2) == 2
    assert parts.attentions[1] is not teacher.transformer.attentions[3] and parts.attentions[1].layer_id == 1
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    assert student(input_ids=ids).logits.shape == (1, 3)

    class Config:  # a per-layer table keyed by layer index (Gemma 4's per_layer_config)
        per_layer_config = {"1": "local", "3": "global"}
        label_names = {"0": "a", "1": "b"}  # not per layer

        def to_dict(self):
            return {"per_layer_config": self.per_layer_config, "label_names": self.label_names}

    table = Config()
    cut_per_layer_fields(table, [0, 3], total=4)
    assert table.per_layer_config == {"1": "global"} and table.label_names == {"0": "a", "1": "b"}
