"""The Python API: edgekd.distill/export/bench, what the command line calls."""

from __future__ import annotations

import hashlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import typer

import edgekd
from conftest import assert_clean_error, make_rows, run_cli
from edgekd.cli import app

ROOT = Path(__file__).resolve().parent.parent


def _digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


SLICED = "hidden=16,layers=2,heads=2,intermediate=32"


@pytest.mark.parametrize("flags, keywords", [
    (["--student-layers", "0,3"], {"student_layers": "0,3"}),
    (["--student-config", SLICED, "--trim-vocab"], {"student_config": SLICED, "trim_vocab": True}),
], ids=["layer cut", "sliced and trimmed"])
def test_the_cli_and_the_api_make_identical_students(teacher_dir, train_file, tmp_path, flags, keywords):
    # execute
    result = run_cli("distill", "--teacher", teacher_dir, "--data", train_file, "--out", tmp_path / "cli",
                     "--epochs", "1", "--max-length", "32", "--seed", "3", "--quiet", *flags)
    student = edgekd.distill(teacher=str(teacher_dir), data=train_file, out=tmp_path / "api", epochs=1,
                             max_length=32, seed=3, quiet=True, log=None, **keywords)
    # assert
    assert result.exit_code == 0, result.output
    assert _digest(tmp_path / "cli") == _digest(student.path)
    assert student.task == "text-classification" and student.steps > 0 and "accuracy" in student.validation


def test_every_option_of_each_command_is_a_keyword_of_its_function():
    commands = typer.main.get_command(app).commands
    for name, function, renamed in (("distill", edgekd.distill, {}), ("export", edgekd.export, {"target": "targets"}),
                                    ("bench", edgekd.bench, {})):
        options = {renamed.get(p.name, p.name) for p in commands[name].params}
        assert options == set(inspect.signature(function).parameters) - {"log"}, name


def test_in_memory_teacher_and_rows(teacher_dir, tmp_path):
    from edgekd.models import load_classifier

    rows = make_rows(64, seed=1)
    from_memory = edgekd.distill(teacher=load_classifier(teacher_dir), data=rows, out=tmp_path / "memory",
                                 student_layers="1", epochs=1, max_length=32, quiet=True, log=None)
    from_file = edgekd.distill(teacher=str(teacher_dir), data=_jsonl(rows, tmp_path / "rows.jsonl"),
                               out=tmp_path / "file", student_layers="1", epochs=1, max_length=32, quiet=True, log=None)
    assert _digest(from_memory.path) == _digest(from_file.path)


def test_a_datasets_dataset_is_data(teacher_dir, tmp_path):
    import datasets

    dataset = datasets.Dataset.from_list(make_rows(40, seed=2))
    student = edgekd.distill(teacher=str(teacher_dir), data=dataset, out=tmp_path / "s", student_layers="1",
                             epochs=1, max_length=32, quiet=True, log=None)
    artifacts = edgekd.export(student.path, targets=["onnx-fp32"], out=tmp_path / "e", data=dataset, log=None)
    assert artifacts[0].accuracy is not None and artifacts[0].parity.max_abs_diff < 1e-4


def _jsonl(rows: list[dict], path: Path) -> Path:
    import json

    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_failures_raise_user_errors_and_never_exit(teacher_dir, tmp_path):
    with pytest.raises(edgekd.UserError, match="is required"):
        edgekd.distill(teacher=str(teacher_dir), out=tmp_path / "s")
    with pytest.raises(edgekd.UserError, match="not a dict"):
        edgekd.distill(teacher=str(teacher_dir), data=["a text"], out=tmp_path / "s", log=None)
    with pytest.raises(edgekd.UserError, match="--divergence is an option of --task causal-lm only"):
        edgekd.distill(teacher=str(teacher_dir), data=make_rows(8), out=tmp_path / "s", divergence="jsd")
    with pytest.raises(edgekd.UserError, match="pass the teacher's folder"):
        edgekd.bench(teacher=(object(), object()), data=make_rows(8))


def test_a_recipe_and_keywords_merge_as_on_the_command_line(teacher_dir, train_file, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("student-layers: '1'\nepochs: 3\nmax-length: 16\nquiet: true\n")
    student = edgekd.distill(recipe=recipe, teacher=str(teacher_dir), data=train_file, out=tmp_path / "s", epochs=1,
                             log=None)
    assert student.steps == 4  # one epoch (the keyword beat the recipe's 3) of 58 rows at batch 16


def test_a_poor_student_raises_gate_failed_after_saving_it(teacher_dir, tmp_path, monkeypatch):
    import edgekd.tasks.shared as shared

    monkeypatch.setattr("edgekd.metrics.near_chance", lambda *a, **k: "validation accuracy at chance")
    with pytest.raises(edgekd.GateFailed, match="learnt nothing useful"):
        edgekd.distill(teacher=str(teacher_dir), data=make_rows(64), out=tmp_path / "s", student_layers="1",
                       epochs=1, quiet=True, log=None)
    assert (tmp_path / "s" / "model.safetensors").is_file()
    kept = edgekd.distill(teacher=str(teacher_dir), data=make_rows(64), out=tmp_path / "k", student_layers="1",
                          epochs=1, quiet=True, log=None, allow_poor_student=True)
    assert kept.poor and shared.RANDOM_INIT_LR == 1e-3


def test_the_cli_turns_an_api_error_into_one_line(teacher_dir, tmp_path):
    assert_clean_error(run_cli("distill", "--teacher", teacher_dir, "--data", tmp_path / "none.csv",
                               "--out", tmp_path / "s"), "does not exist")


def test_the_python_api_example_runs(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "python_api.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "gates passed" in result.stdout and (tmp_path / "bench" / "report.json").is_file()
    assert "student/onnx-int8" in result.stdout


def test_pictures_handed_over_in_memory_are_read_like_a_table(tmp_path):
    import numpy as np
    from PIL import Image

    from edgekd.vision.data import load_images

    rows = [{"image": Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)), "label": name}
            for i, name in enumerate(["a", "b", "a"])]
    dataset = load_images(rows, label2id={"a": 0, "b": 1})
    assert len(dataset) == 3 and dataset.labels == [0, 1, 0] and dataset.source == "the 3 rows given"
    with pytest.raises(edgekd.UserError, match="the 1 rows given has no image column"):
        load_images([{"text": "not a picture"}], label2id={"a": 0})
