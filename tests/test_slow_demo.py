"""Slow tier: the real MiniLM teacher and BBC News articles, end to end through the CLI.

A small slice (a few hundred articles, short sequences, one epoch) keeps it to minutes.
"""

import json

import pytest
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.data import demo_splits, write_jsonl
from edgekd.tasks.text_demo import build_teacher

pytestmark = pytest.mark.slow
runner = CliRunner()
MAX_LENGTH = 64


@pytest.fixture(scope="module")
def slice_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bbc")
    splits = demo_splits(seed=0)
    small = {"train": splits["train"].subset(range(300)),
             "validation": splits["validation"].subset(range(60)),
             "test": splits["test"].subset(range(100))}
    for name, data in small.items():
        write_jsonl(data, folder / f"{name}.jsonl")
    return folder, small


@pytest.fixture(scope="module")
def minilm_teacher(slice_files, tmp_path_factory):
    from dataclasses import replace

    from edgekd.tasks.text_demo import TEACHER_RECIPE

    _, small = slice_files
    cache = tmp_path_factory.mktemp("cache")
    recipe = replace(TEACHER_RECIPE, epochs=2, max_length=MAX_LENGTH, lr=2e-4)
    return build_teacher(small, cache=cache, recipe=recipe, show_progress=False)


def test_real_minilm_bbc_pipeline_through_the_cli(slice_files, minilm_teacher, tmp_path):
    folder, _ = slice_files
    student, export = tmp_path / "student", tmp_path / "export"
    result = runner.invoke(app, ["distill", "--teacher", str(minilm_teacher), "--data",
                                 str(folder / "train.jsonl"), "--validation-data",
                                 str(folder / "validation.jsonl"), "--out", str(student),
                                 "--epochs", "1", "--max-length", str(MAX_LENGTH), "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", str(student), "--target", "onnx-fp32",
                                 "--target", "onnx-int8", "--out", str(export)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["bench", "--teacher", str(minilm_teacher), "--student", str(student),
                                 "--artifacts", str(export), "--data", str(folder / "test.jsonl"),
                                 "--max-length", str(MAX_LENGTH), "--sequence-length",
                                 str(MAX_LENGTH), "--repeats", "10", "--quiet",
                                 # a one-epoch student on 100 articles: gates are not under test here
                                 "--max-accuracy-drop", "50"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads((export / "report.json").read_text())["rows"]}
    teacher_accuracy = rows["teacher"]["quality"]["accuracy"]
    assert teacher_accuracy > 0.8  # 300 articles, 2 short epochs: well above the 0.2 of chance
    assert rows["student/onnx-int8"]["quality"]["accuracy"] > 0.6
    assert rows["student/onnx-int8"]["quality"]["agreement"] > 0.6
    # the 2-layer student is smaller than the 6-layer teacher, and its fp32 export is exact
    assert rows["student"]["params"] < rows["teacher"]["params"]
    assert rows["student/onnx-fp32"]["quality"]["accuracy"] == rows["student"]["quality"]["accuracy"]


def test_the_demo_compares_each_student_artifact_with_the_teacher_exported_to_its_target(tmp_path):
    from edgekd.integrity import corruption

    out, cache = tmp_path / "demo", tmp_path / "cache"
    result = runner.invoke(app, ["demo", "--limit", "40", "--max-length", "32", "--repeats", "3", "--quiet",
                                 "--out", str(out), "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert set(rows) == {"teacher", "student", "student/onnx-fp32", "student/onnx-int8",
                         "teacher/onnx-fp32", "teacher/onnx-int8"}
    for target in ("onnx-fp32", "onnx-int8"):
        student, teacher = rows[f"student/{target}"], rows[f"teacher/{target}"]
        assert student["speedup_same_target"] == pytest.approx(teacher["latency"]["p50_ms"] / student["latency"]["p50_ms"])
    assert {gate["artifact"] for gate in report["gates"]} == {"student/onnx-fp32", "student/onnx-int8"}
    # the student is sliced and trimmed: its rows are tokenized with its own, smaller vocabulary
    kept = report["demo"]["vocabulary"]["kept_tokens"]
    assert kept < 30522 and rows["student"]["vocabulary"]["kept_tokens"] == kept
    assert rows["student/onnx-int8"]["vocabulary"]["kept_tokens"] == kept and rows["teacher/onnx-int8"]["vocabulary"] is None
    assert rows["student"]["params"] < rows["teacher"]["params"] / 3
    (teacher_folder,) = (cache / "teachers").iterdir()
    assert corruption(teacher_folder) is None  # the cached teacher is sealed with its checksums


def test_the_image_demo_on_a_slice_of_fashion_mnist(tmp_path):
    """Fashion-MNIST from Debian's package (fetched and verified when not installed), a ResNet
    teacher trained on 300 pictures, the shrunk student, both exports, the report."""
    result = runner.invoke(app, ["demo", "--task", "image-classification", "--limit", "300", "--epochs", "1",
                                 "--repeats", "5", "--out", str(tmp_path / "demo"), "--cache-dir",
                                 str(tmp_path / "cache"), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert report["task"] == "image-classification" and report["data"]["rows"] == 300
    assert set(rows) == {"teacher", "student", "student/onnx-fp32", "student/onnx-int8", "teacher/onnx-fp32",
                         "teacher/onnx-int8"}
    assert rows["teacher"]["input_size"]["height"] == 56 and rows["student"]["input_size"]["height"] == 40
    assert rows["student/onnx-int8"]["precision"] == "int8-static"
    # the teacher does over 10x the student's work
    assert rows["teacher"]["efficiency"]["operations"] > 10 * rows["student"]["efficiency"]["operations"]
    refused = runner.invoke(app, ["demo", "--task", "image-classification", "--max-length", "64"])
    assert refused.exit_code != 0 and "--max-length is an option of --task text-classification" in refused.output
