"""`edgekd export` through typer's runner: several targets, --data, one clear line per bad input."""

import json


from conftest import assert_clean_error, make_rows, run_cli as run, write_jsonl


def test_several_targets_with_data_print_one_summary_row_each(student_dir, tmp_path):
    data = write_jsonl(make_rows(30, seed=8), tmp_path / "val.jsonl")
    out = tmp_path / "export"
    result = run("export", student_dir, "--target", "onnx-fp32", "--target", "onnx-int8-static",
                 "--target", "laptop-x86", "--data", data, "--max-length", "32", "--out", out)
    assert result.exit_code == 0, result.output
    for name in ("onnx-fp32", "onnx-int8-static", "laptop-x86"):
        assert name in result.output
        manifest = json.loads((out / name / "edgekd.json").read_text())
        assert manifest["accuracy"]["rows"] == 30 and manifest["accuracy"]["source"] == str(data)
    assert "accuracy not checked" not in result.output
    assert json.loads((out / "laptop-x86" / "edgekd.json").read_text())["runtime"]["threads"] == 4


def test_without_data_the_summary_says_accuracy_was_not_checked(student_dir, tmp_path):
    result = run("export", student_dir, "--target", "onnx-fp32", "--out", tmp_path / "x")
    assert result.exit_code == 0, result.output
    assert "accuracy not checked" in result.output


def test_bad_export_input_gives_one_clear_line(student_dir, tmp_path):
    assert_clean_error(run("export", student_dir, "--target", "tpu-9000", "--out", tmp_path / "x"),
                       r"unknown target 'tpu-9000'; known targets: .*onnx-int8-static")
    assert_clean_error(run("export", tmp_path / "nope", "--out", tmp_path / "x"), "does not exist")
    (tmp_path / "x" / "onnx-fp32").mkdir(parents=True)
    (tmp_path / "x" / "onnx-fp32" / "model.onnx").write_text("old")
    assert_clean_error(run("export", student_dir, "--target", "onnx-fp32", "--out", tmp_path / "x"),
                       "already exists; pass --overwrite")
    assert_clean_error(run("export", student_dir, "--exporter", "tf2onnx", "--out", tmp_path / "y"),
                       "--exporter 'tf2onnx' is not one of")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "joyful"}\n')
    assert_clean_error(run("export", student_dir, "--data", bad, "--out", tmp_path / "y"),
                       "label 'joyful' is not one of")
    assert not (tmp_path / "y").exists()


def test_an_unmet_budget_exits_2_and_leaves_nothing(student_dir, tmp_path):
    target = tmp_path / "tiny-flash.yaml"
    target.write_text("base: onnx-int8\nbudgets:\n  max_size_mb: 0.001\n")
    result = run("export", student_dir, "--target", target, "--out", tmp_path / "out")
    assert_clean_error(result, r"model file is [0-9.]+ MB, over its budget of 0.001 MB", code=2)
    assert not (tmp_path / "out").exists()  # not even the empty --out it would have made
