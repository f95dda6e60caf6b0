"""One set of commands for every task: distill, export and bench read the task from the
teacher's or student's config.json (--task names it when needed), share option names and
the target vocabulary, and an option of the other task is one clear line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import assert_clean_error, run_cli as run
from lm_tiny import make_texts, save_llama


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A tiny Llama teacher, training and held-out text, and a student distilled from them
    with `edgekd distill` (the task read from the teacher)."""
    folder = tmp_path_factory.mktemp("lm")
    teacher = save_llama(folder / "teacher", layers=3, seed=1)
    train, test = folder / "train.txt", folder / "test.jsonl"
    train.write_text("\n".join(make_texts(16)))
    test.write_text("".join(json.dumps({"text": t}) + "\n" for t in make_texts(4, seed=2)))
    student = folder / "student"
    result = run("distill", "--teacher", teacher, "--data", train, "--out", student,
                 "--student-layers", "1", "--max-steps", "4", "--batch-size", "4", "--max-length", "24",
                 "--top-k", "8", "--cache-dir", folder / "cache", "--quiet")
    assert result.exit_code == 0, result.output
    return {"teacher": teacher, "train": train, "test": test, "student": student, "folder": folder}


def test_distill_causal_lm_keeps_lm_defaults(lm):
    # the options not given keep the causal-LM defaults, not the classifier's
    written = json.loads((lm["student"] / "edgekd-train.json").read_text())["config"]
    assert (written["lr"], written["temperature"], written["checkpoint_every"]) == (3e-4, 1.0, 50)
    assert written["batch_size"] == 4 and written["top_k"] == 8 and written["max_steps"] == 4
    assert not (lm["folder"] / "student.checkpoints").exists()


def test_epochs_and_the_hard_label_weight_mean_the_same_for_a_causal_lm(lm, tmp_path):
    # 16 texts at batch 4: one epoch is 4 steps, as --max-steps 4 made above
    out = tmp_path / "student"
    result = run("distill", "--teacher", lm["teacher"], "--data", lm["train"], "--out", out,
                 "--student-layers", "1", "--epochs", "1", "--batch-size", "4", "--max-length", "24",
                 "--top-k", "8", "--hard-label-weight", "0.5", "--cache-dir", lm["folder"] / "cache", "--quiet")
    assert result.exit_code == 0, result.output
    assert "(4 steps" in result.output
    expected, produced = load_file(lm["student"] / "model.safetensors"), load_file(out / "model.safetensors")
    assert expected.keys() == produced.keys() and all((expected[k] == produced[k]).all() for k in expected)


def test_a_recipe_can_choose_the_task(lm, tmp_path):
    recipe = tmp_path / "lm.yaml"
    recipe.write_text("task: causal-lm\nstudent-layers: '1'\nmax-steps: 2\nbatch-size: 4\nmax-length: 16\n"
                      "divergence: reverse_kl\nhard-label-weight: 0.25\ntop-k: 0\nquiet: true\n")
    out = tmp_path / "student"
    result = run("distill", "--recipe", recipe, "--teacher", lm["teacher"], "--data", lm["train"],
                 "--out", out, "--max-steps", "3")
    assert result.exit_code == 0, result.output
    written = json.loads((out / "edgekd-train.json").read_text())["config"]
    assert (written["divergence"], written["hard_label_weight"], written["top_k"]) == ("reverse_kl", 0.25, 0)
    assert written["max_steps"] == 3  # the flag beat the recipe's 2


@pytest.mark.parametrize("extra, option", [(["--validation-fraction", "0.3"], "--validation-fraction"),
                                           (["--label-column", "y"], "--label-column"),
                                           (["--hidden-mse-weight", "1"], "--hidden-mse-weight"),
                                           (["--teacher-cache"], "--teacher-cache")])
def test_classification_options_are_refused_for_causal_lm(lm, tmp_path, extra, option):
    result = run("distill", "--teacher", lm["teacher"], "--data", lm["train"],
                 "--out", tmp_path / "s", "--student-layers", "1", *extra)
    assert_clean_error(result, f"{option} is an option of --task text-classification only; drop it")
    assert not (tmp_path / "s").exists()


def test_causal_lm_options_and_teachers_are_refused_for_classification(lm, teacher_dir, train_file, tmp_path):
    result = run("distill", "--teacher", teacher_dir, "--data", train_file, "--out", tmp_path / "s",
                 "--divergence", "jsd")
    assert_clean_error(result, "--divergence is an option of --task causal-lm only; "
                               "drop it, or pass --task causal-lm")
    result = run("distill", "--task", "text-classification", "--teacher", lm["teacher"], "--data", lm["train"],
                 "--out", tmp_path / "s", "--student-layers", "1")
    assert_clean_error(result, "holds a causal-lm model, not a text-classification one; pass --task causal-lm")
    result = run("distill", "--task", "seq2seq", "--teacher", teacher_dir, "--data", train_file,
                 "--out", tmp_path / "s")
    assert_clean_error(result, "--task must be one of text-classification, causal-lm, image-classification, got 'seq2seq'")


def test_export_and_bench_find_a_causal_lm_in_config_json(lm, tmp_path):
    export = tmp_path / "export"
    result = run("export", lm["student"], "--target", "onnx-fp32", "--target", "onnx-int8", "--out", export)
    assert result.exit_code == 0, result.output
    assert "greedy tokens equal to PyTorch: 100%" in result.output
    assert sorted(p.name for p in export.iterdir()) == ["onnx-fp32", "onnx-int8"]
    manifest = json.loads((export / "onnx-int8" / "edgekd.json").read_text())
    assert (manifest["task"], manifest["target"], manifest["precision"]) == ("causal-lm", "onnx-int8", "int8-dynamic")
    result = run("bench", "--teacher", lm["teacher"], "--student", lm["student"], "--artifacts", export,
                 "--data", lm["test"], "--new-tokens", "4", "--rounds", "1", "--max-perplexity-ratio", "100")
    assert result.exit_code == 0, result.output
    assert "ppl" in result.output and "decode t/s" in result.output
    report = json.loads((export / "report.json").read_text())  # beside the artifacts, as for classifiers
    assert report["task"] == "causal-lm" and report["schema_version"] == 7
    assert [row["name"] for row in report["rows"]] == ["teacher", "student", "student/onnx-fp32", "student/onnx-int8"]
    assert (export / "report.md").read_text().startswith("# edgekd bench report")
    # every key the report holds is documented in docs/report-schema.md, as for classifiers
    documented = set(re.findall(r"`(\w+)`", (Path(__file__).parent.parent / "docs" / "report-schema.md").read_text()))
    keys = set(report) | set(report["data"]) | set(report["settings"]) | set(report["machine"])
    keys |= {k for row in report["rows"] for part in (row, row["quality"], row["latency"], row["memory"]) for k in part}
    keys |= {k for gate in report["gates"] for k in gate}
    assert keys <= documented, sorted(keys - documented)


def test_causal_lm_bench_gates_exit_2_and_still_write_the_report(lm, tmp_path):
    export = tmp_path / "export"
    assert run("export", lm["student"], "--target", "onnx-int4", "--out", export,
               "--max-perplexity-ratio", "100").exit_code == 0
    # decode can never be this fast: the latency gate fails
    result = run("bench", "--teacher", lm["teacher"], "--student", lm["student"], "--artifacts", export,
                 "--data", lm["test"], "--new-tokens", "4", "--rounds", "1", "--max-latency-ms", "0.0001",
                 "--out", tmp_path / "report")
    assert_clean_error(result, r"gate --max-latency-ms failed for student/onnx-int4: .* ms > limit 0.00 ms "
                               r"\(from command line\)", code=2)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    failed = [gate for gate in report["gates"] if not gate["passed"]]
    assert [(gate["gate"], gate["artifact"]) for gate in failed] == [("latency_ms", "student/onnx-int4")]
    # the perplexity budget of the target (onnx-int4: 2x) is the default, against the student
    gate = next(g for g in report["gates"] if g["gate"] == "perplexity_ratio")
    assert (gate["limit"], gate["source"]) == (2.0, "target onnx-int4")
    row = next(r for r in report["rows"] if r["name"] == "student/onnx-int4")
    assert gate["value"] == pytest.approx(row["quality"]["perplexity"]
                                          / report["rows"][1]["quality"]["perplexity"])
    # a perplexity ratio below 1 cannot be met by anything
    result = run("bench", "--teacher", lm["teacher"], "--student", lm["student"], "--data", lm["test"],
                 "--max-perplexity-ratio", "0.5")
    assert_clean_error(result, "--max-perplexity-ratio must be at least 1")


def test_export_names_the_targets_that_fit(lm, student_dir, tmp_path):
    result = run("export", lm["student"], "--target", "onnx-fp16", "--out", tmp_path / "e")
    assert_clean_error(result, "target 'onnx-fp16' does not apply to causal-lm models .*; for causal-lm "
                               "choose from .*onnx-fp32, onnx-int4, onnx-int8, ort-mobile")
    result = run("export", lm["student"], "--target", "int4", "--out", tmp_path / "e")
    assert_clean_error(result, "unknown target 'int4'; known targets: .*onnx-int4")
    result = run("export", lm["student"], "--target", "onnx-fp32", "--label-column", "y", "--out", tmp_path / "e")
    assert_clean_error(result, "--label-column is an option of --task text-classification only")
    result = run("export", student_dir, "--max-perplexity-ratio", "1.2", "--out", tmp_path / "e")
    assert_clean_error(result, "--max-perplexity-ratio is an option of --task causal-lm only")
    result = run("export", lm["student"], "--task", "text-classification", "--out", tmp_path / "e")
    assert_clean_error(result, "holds a causal-lm model, not a text-classification one; pass --task causal-lm")
    result = run("export", student_dir, "--task", "causal-lm", "--target", "onnx-fp32", "--out", tmp_path / "e")
    assert_clean_error(result, "holds a text-classification model, not a causal-lm one")
    assert not (tmp_path / "e").exists()


def test_targets_lists_every_target_by_task():
    result = run("targets")
    assert result.exit_code == 0, result.output
    text, rest = result.output.split("causal-lm:")
    causal_lm, images = rest.split("image-classification:")
    assert "onnx-int8" in images and "executorch-int8" in images and "onnx-int4" not in images
    assert "onnx-fp16" in text and "executorch" in text and "onnx-int4" in text
    assert "onnx-int8" in causal_lm and "onnx-int4" in causal_lm and "ort-mobile" in causal_lm
    assert "executorch-8da4w" in causal_lm and "executorch-8da4w" not in text + images
    assert "onnx-fp16" not in causal_lm and "executorch-int8" not in causal_lm


def test_bench_refuses_classifier_options_for_a_causal_lm(lm, tmp_path):
    result = run("bench", "--teacher", lm["teacher"], "--student", lm["student"], "--data", lm["test"],
                 "--repeats", "3")
    assert_clean_error(result, "--repeats is an option of --task text-classification only")


def test_demo_routes_by_task(tmp_path):
    # --max-steps 0 with --epochs 0 is refused by the causal-LM demo's own config, before any model is loaded
    result = run("demo", "--task", "causal-lm", "--epochs", "0", "--out", tmp_path / "d")
    assert_clean_error(result, "--epochs must be at least 1")
    result = run("demo", "--task", "causal-lm", "--repeats", "1", "--out", tmp_path / "d")
    assert_clean_error(result, "--repeats is an option of --task text-classification only")
    result = run("demo", "--student-layers", "5", "--out", tmp_path / "d")
    assert_clean_error(result, "--student-layers is an option of --task causal-lm only")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("command", ["distill", "export", "bench", "demo"])
def test_help_teaches_both_tasks(command):
    result = run(command, "--help")
    assert result.exit_code == 0 and "causal-lm" in result.output and "Example" in result.output


def test_a_hub_id_is_detected_from_its_config(monkeypatch):
    from transformers import AutoConfig, LlamaConfig

    from edgekd.tasks import detect

    asked = []

    def from_pretrained(source, local_files_only=False):
        asked.append((source, local_files_only))
        return LlamaConfig(architectures=["LlamaForCausalLM"])

    monkeypatch.setattr(AutoConfig, "from_pretrained", from_pretrained)
    assert detect("HuggingFaceTB/SmolLM2-135M", hub=True) == "causal-lm"
    assert asked == [("HuggingFaceTB/SmolLM2-135M", True)]  # the local hub cache first
    assert detect("runs/missing/student", hub=True) is None and len(asked) == 1  # a path, not a hub id
    assert detect("runs/student") is None and len(asked) == 1  # students are folders: never looked up


def test_causal_lm_teacher_artifacts_give_the_same_target_speedup(lm, tmp_path):
    student_export, teacher_export = tmp_path / "student-export", tmp_path / "teacher-export"
    for source, out in ((lm["student"], student_export), (lm["teacher"], teacher_export)):
        result = run("export", source, "--target", "onnx-fp32", "--out", out)
        assert result.exit_code == 0, result.output
    result = run("bench", "--teacher", lm["teacher"], "--student", lm["student"], "--artifacts", student_export,
                 "--teacher-artifacts", teacher_export, "--data", lm["test"], "--new-tokens", "4", "--rounds", "1",
                 "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads((tmp_path / "report" / "report.json").read_text())["rows"]}
    assert set(rows) == {"teacher", "student", "student/onnx-fp32", "teacher/onnx-fp32"}
    ms = {name: row["latency"]["p50_ms"] for name, row in rows.items()}  # decode ms per token
    assert rows["student/onnx-fp32"]["speedup_same_target"] == pytest.approx(ms["teacher/onnx-fp32"] / ms["student/onnx-fp32"])
    assert rows["student"]["speedup_same_target"] == pytest.approx(rows["student"]["speedup"])
    assert rows["teacher/onnx-fp32"]["speedup_same_target"] is None
    assert rows["teacher/onnx-fp32"]["reference"] == "teacher"


def test_the_causal_lm_demo_benches_the_teacher_exported_to_the_same_targets(lm, tmp_path, monkeypatch):
    from dataclasses import replace

    from edgekd.config import LMDistillConfig
    from edgekd.demo import run
    from edgekd.lm.demo import LMDemo, LMDemoConfig
    from lm_tiny import make_texts

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    config = replace(LMDemoConfig(), student_layers="1", targets=("onnx-fp32", "onnx-int8"),
                     distill=LMDistillConfig(max_steps=2, batch_size=4, max_length=24, top_k=8, device="cpu"))
    report = run(LMDemo(config, teacher_source=lm["teacher"], show_progress=False,
                        texts=(make_texts(8), make_texts(3, seed=5))), out=tmp_path / "demo")
    rows = {row["name"]: row for row in report["rows"]}
    assert set(rows) == {"teacher", "student", "student/onnx-fp32", "student/onnx-int8",
                         "teacher/onnx-fp32", "teacher/onnx-int8"}
    int8 = rows["student/onnx-int8"]
    assert int8["speedup_same_target"] == pytest.approx(rows["teacher/onnx-int8"]["latency"]["p50_ms"]
                                                        / int8["latency"]["p50_ms"])
    assert "teacher_export_seconds" in report["demo"]["timings"]
