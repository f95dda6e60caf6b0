"""The CLI through typer's runner: the happy path and one clear line for each bad input."""

import json

import pytest
from typer.testing import CliRunner

from conftest import assert_clean_error, make_rows, run_cli as run, write_jsonl
from edgekd.cli import app

runner = CliRunner()


def test_distill_export_bench_end_to_end(teacher_dir, train_file, test_file, tmp_path):
    student, artifacts = tmp_path / "student", tmp_path / "export"
    result = run("distill", "--teacher", teacher_dir, "--data", train_file, "--out", student,
                 "--student-layers", "2", "--epochs", "1", "--max-length", "32", "--quiet")
    assert result.exit_code == 0, result.output
    assert "student written to" in result.output and (student / "model.safetensors").is_file()
    result = run("export", student, "--target", "onnx-fp32", "--target", "onnx-int8", "--out", artifacts)
    assert result.exit_code == 0, result.output
    assert (artifacts / "onnx-int8" / "model.onnx").is_file()
    result = run("bench", "--teacher", teacher_dir, "--student", student, "--artifacts", artifacts,
                 "--data", test_file, "--repeats", "3", "--max-length", "32",
                 "--sequence-length", "32", "--no-memory", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((artifacts / "report.json").read_text())
    assert len(report["rows"]) == 4 and (artifacts / "report.md").is_file()


def test_help_teaches_with_examples():
    for command in ("distill", "export", "bench", "demo"):
        result = run(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output


def test_targets_lists_the_shipped_targets():
    result = run("targets")
    assert result.exit_code == 0 and "onnx-int8" in result.output and "onnx-fp32" in result.output


@pytest.mark.parametrize("case", ["missing data", "no such column", "empty data", "unknown label",
                                  "not a classifier", "layers out of range", "bad option"])
def test_distill_bad_input(case, teacher_dir, train_file, tmp_path):
    out = tmp_path / "out"
    args = {"--teacher": teacher_dir, "--data": train_file, "--out": out, "--quiet": None}
    expected = {
        "missing data": "does not exist",
        "no such column": "no column 'sentence'",
        "empty data": "has no rows",
        "unknown label": "label 'furious' is not one of the teacher's labels",
        "not a classifier": "not a model folder",
        "layers out of range": "--student-layers 9 is out of range",
        "bad option": "--temperature must be in",
    }[case]
    if case == "missing data":
        args["--data"] = tmp_path / "missing.csv"
    elif case == "no such column":
        args["--text-column"] = "sentence"
    elif case == "empty data":
        args["--data"] = tmp_path / "empty.jsonl"
        args["--data"].write_text("")
    elif case == "unknown label":
        args["--data"] = write_jsonl(make_rows(5) + [{"text": "w1 w2", "label": "furious"}],
                                     tmp_path / "bad.jsonl")
    elif case == "not a classifier":
        args["--teacher"] = tmp_path
    elif case == "layers out of range":
        args["--student-layers"] = 9
    elif case == "bad option":
        args["--temperature"] = -1
    flat = [x for k, v in args.items() for x in ((k,) if v is None else (k, v))]
    assert_clean_error(run("distill", *flat), expected)
    assert not out.exists()  # no partial output folder
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_export_bad_input(student_dir, tmp_path):
    assert_clean_error(run("export", student_dir, "--target", "tpu-9000", "--out", tmp_path / "x"),
                       r"unknown target 'tpu-9000'; known targets: .*onnx-int8")
    assert_clean_error(run("export", tmp_path / "nope", "--out", tmp_path / "x"), "does not exist")
    assert not (tmp_path / "x").exists()


def test_bench_bad_input(teacher_dir, test_file, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_clean_error(run("bench", "--teacher", teacher_dir, "--data", test_file,
                           "--artifacts", tmp_path / "empty"), "holds no exported artifact")


def test_debug_shows_the_traceback(teacher_dir, tmp_path):
    from edgekd.errors import UserError

    arguments = ["distill", "--teacher", str(teacher_dir), "--data", str(tmp_path / "none.csv"),
                 "--out", str(tmp_path / "o")]
    result = runner.invoke(app, ["--debug", *arguments])
    # with --debug the UserError itself escapes (the traceback is printed), not a clean exit
    assert result.exit_code != 0 and isinstance(result.exception, UserError)
    assert "does not exist" in str(result.exception)
    # without it: one line and exit code 1, the error turned into SystemExit by the CLI
    plain = runner.invoke(app, arguments)
    assert plain.exit_code == 1 and isinstance(plain.exception, SystemExit)
    assert "error:" in plain.output and "Traceback" not in plain.output
