"""`--task causal-lm` on the main commands: distill, export, bench and demo reach the causal-LM
stages (export and bench find the task in config.json), and an option of the other task is
one clear line."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from conftest import assert_clean_error, run_cli as run
from lm_tiny import make_texts, save_llama


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A tiny Llama teacher, training and held-out text, and a student distilled from them
    with `edgekd distill --task causal-lm`."""
    folder = tmp_path_factory.mktemp("lm")
    teacher = save_llama(folder / "teacher", layers=3, seed=1)
    train, test = folder / "train.txt", folder / "test.jsonl"
    train.write_text("\n".join(make_texts(16)))
    test.write_text("".join(json.dumps({"text": t}) + "\n" for t in make_texts(4, seed=2)))
    student = folder / "student"
    result = run("distill", "--task", "causal-lm", "--teacher", teacher, "--data", train, "--out", student,
                 "--student-layers", "1", "--steps", "4", "--batch-size", "4", "--max-length", "24",
                 "--top-k", "8", "--cache-dir", folder / "cache", "--quiet")
    assert result.exit_code == 0, result.output
    return {"teacher": teacher, "train": train, "test": test, "student": student, "folder": folder}


def test_distill_causal_lm_keeps_lm_defaults_and_equals_lm_distill(lm, tmp_path):
    # the options not given keep lm-distill's defaults, not the classifier's
    written = json.loads((lm["student"] / "edgekd-train.json").read_text())["config"]
    assert (written["lr"], written["temperature"], written["checkpoint_every"]) == (3e-4, 1.0, 50)
    assert written["batch_size"] == 4 and written["top_k"] == 8 and written["steps"] == 4
    assert not (lm["folder"] / "student.checkpoints").exists()
    # lm-distill is the same code path: the same options make the same student
    alias = tmp_path / "alias"
    result = run("lm-distill", "--teacher", lm["teacher"], "--data", lm["train"], "--out", alias,
                 "--student-layers", "1", "--steps", "4", "--batch-size", "4", "--max-length", "24",
                 "--top-k", "8", "--cache-dir", lm["folder"] / "cache", "--quiet")
    assert result.exit_code == 0, result.output
    expected, produced = load_file(lm["student"] / "model.safetensors"), load_file(alias / "model.safetensors")
    assert expected.keys() == produced.keys() and all((expected[k] == produced[k]).all() for k in expected)


def test_a_recipe_can_choose_the_task(lm, tmp_path):
    recipe = tmp_path / "lm.yaml"
    recipe.write_text("task: causal-lm\nstudent-layers: '1'\nsteps: 2\nbatch-size: 4\nmax-length: 16\n"
                      "divergence: reverse_kl\nce-weight: 0.25\ntop-k: 0\nquiet: true\n")
    out = tmp_path / "student"
    result = run("distill", "--recipe", recipe, "--teacher", lm["teacher"], "--data", lm["train"],
                 "--out", out, "--steps", "3")
    assert result.exit_code == 0, result.output
    written = json.loads((out / "edgekd-train.json").read_text())["config"]
    assert (written["divergence"], written["ce_weight"], written["top_k"]) == ("reverse_kl", 0.25, 0)
    assert written["steps"] == 3  # the flag beat the recipe's 2


@pytest.mark.parametrize("extra, option", [(["--alpha", "0.3"], "--alpha"),
                                           (["--label-column", "y"], "--label-column"),
                                           (["--hidden-mse-weight", "1"], "--hidden-mse-weight"),
                                           (["--epochs", "2"], "--epochs")])
def test_classification_options_are_refused_for_causal_lm(lm, tmp_path, extra, option):
    result = run("distill", "--task", "causal-lm", "--teacher", lm["teacher"], "--data", lm["train"],
                 "--out", tmp_path / "s", "--student-layers", "1", *extra)
    assert_clean_error(result, f"{option} is an option of --task classification only; drop it")
    assert not (tmp_path / "s").exists()


def test_causal_lm_options_and_teachers_are_refused_for_classification(lm, teacher_dir, train_file, tmp_path):
    result = run("distill", "--teacher", teacher_dir, "--data", train_file, "--out", tmp_path / "s",
                 "--divergence", "jsd")
    assert_clean_error(result, "--divergence is an option of --task causal-lm only; "
                               "drop it, or pass --task causal-lm")
    result = run("distill", "--teacher", lm["teacher"], "--data", lm["train"], "--out", tmp_path / "s",
                 "--student-layers", "1")
    assert_clean_error(result, "is a causal language model; pass --task causal-lm")
    result = run("distill", "--task", "seq2seq", "--teacher", teacher_dir, "--data", train_file,
                 "--out", tmp_path / "s")
    assert_clean_error(result, "--task must be classification or causal-lm, got 'seq2seq'")


def test_export_and_bench_find_a_causal_lm_in_config_json(lm, tmp_path):
    export = tmp_path / "export"
    result = run("export", lm["student"], "--target", "fp32", "--target", "int8", "--out", export)
    assert result.exit_code == 0, result.output
    assert "greedy tokens equal to PyTorch: 100%" in result.output
    assert sorted(p.name for p in export.iterdir()) == ["fp32", "int8"]
    result = run("bench", "--teacher", lm["teacher"], "--student", lm["student"], "--artifacts", export,
                 "--data", lm["test"], "--new-tokens", "4", "--rounds", "1")
    assert result.exit_code == 0, result.output
    assert "ppl" in result.output and "decode t/s" in result.output
    report = json.loads((export / "report.json").read_text())  # beside the artifacts, as for classifiers
    assert report["task"] == "causal-lm"
    assert set(report["models"]) == {"teacher", "student", "student-fp32", "student-int8"}


def test_export_names_the_targets_that_fit(lm, student_dir, tmp_path):
    result = run("export", lm["student"], "--target", "onnx-int8", "--out", tmp_path / "e")
    assert_clean_error(result, "target 'onnx-int8' is not a causal-LM target; "
                               ".* choose from fp32, int8, int4, int8-ort")
    result = run("export", student_dir, "--target", "int4", "--out", tmp_path / "e")
    assert_clean_error(result, "target 'int4' is for causal LMs, and this student is a classifier; "
                               "choose from .*onnx-int8")
    result = run("export", lm["student"], "--target", "fp32", "--label-column", "y", "--out", tmp_path / "e")
    assert_clean_error(result, "--label-column is an option of --task classification only")
    result = run("export", student_dir, "--max-perplexity-ratio", "1.2", "--out", tmp_path / "e")
    assert_clean_error(result, "--max-perplexity-ratio is an option of --task causal-lm only")
    result = run("export", lm["student"], "--task", "classification", "--out", tmp_path / "e")
    assert_clean_error(result, "holds a causal language model, not a classifier; pass --task causal-lm")
    result = run("export", student_dir, "--task", "causal-lm", "--target", "fp32", "--out", tmp_path / "e")
    assert_clean_error(result, "not a causal language model")
    assert not (tmp_path / "e").exists()


def test_bench_refuses_classifier_options_for_a_causal_lm(lm, tmp_path):
    result = run("bench", "--teacher", lm["teacher"], "--student", lm["student"], "--data", lm["test"],
                 "--repeats", "3")
    assert_clean_error(result, "--repeats is an option of --task classification only")


def test_demo_routes_by_task(tmp_path):
    # --steps 0 is refused by the causal-LM demo's own config, before any model is loaded
    result = run("demo", "--task", "causal-lm", "--steps", "0", "--out", tmp_path / "d")
    assert_clean_error(result, "--steps must be at least 1")
    result = run("demo", "--task", "causal-lm", "--epochs", "1", "--out", tmp_path / "d")
    assert_clean_error(result, "--epochs is an option of --task classification only")
    result = run("demo", "--steps", "5", "--out", tmp_path / "d")
    assert_clean_error(result, "--steps is an option of --task causal-lm only")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("command", ["distill", "export", "bench", "demo"])
def test_help_teaches_both_tasks(command):
    result = run(command, "--help")
    assert result.exit_code == 0 and "causal-lm" in result.output and "Example" in result.output
