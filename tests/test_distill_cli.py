"""`edgekd distill` on bad input: one actionable line, exit 1, nothing written."""

import re

import pytest
from typer.testing import CliRunner

from conftest import make_classifier, make_tokenizer
from edgekd.cli import app


def _student_folder(tmp_path, *, vocabulary_extra=False, labels=3, arch="bert"):
    folder = tmp_path / f"given-{arch}-{labels}-{vocabulary_extra}"
    make_classifier(arch, layers=2, num_labels=labels).save_pretrained(folder)
    tokenizer = make_tokenizer()
    if vocabulary_extra:
        tokenizer.add_tokens(["zebra"])
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case", ["vocabulary", "labels", "deeper", "layers out of range",
                                  "two kinds of student", "out is under a file", "bad layer map"])
def test_distill_refuses_bad_input_before_training(case, teacher_dir, train_file, tmp_path):
    out = tmp_path / "out"
    extra, expected = {
        "vocabulary": (["--student", _student_folder(tmp_path, vocabulary_extra=True)], "tokenizers differ"),
        "labels": (["--student", _student_folder(tmp_path, labels=2)], "labels .* differ from student labels"),
        "deeper": (["--student-config", "layers=6"], "must not be deeper than its teacher"),
        "layers out of range": (["--student-layers", "0,4"], "must list distinct layers from 0 to 3"),
        "two kinds of student": (["--student", "some-model", "--student-config", "layers=2"], "exactly one way"),
        "out is under a file": ([], "is a file, not a folder"),
        "bad layer map": (["--hidden-mse-weight", "1", "--layer-map", "0:9"], "--layer-map '0:9'"),
    }[case]
    if case == "out is under a file":
        (tmp_path / "blocker").write_text("")
        out = tmp_path / "blocker" / "out"
    args = ["distill", "--teacher", teacher_dir, "--data", train_file, "--out", out, "--quiet",
            "--max-length", "16", "--cache-dir", tmp_path / "cache", *extra]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert re.search(expected, result.output), result.output
    assert not out.exists() and not (tmp_path / "out.checkpoints").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_text_pairs_with_a_given_distilbert_student(teacher_dir, tmp_path):
    # The BERT teacher reads token_type_ids; the DistilBERT student has none: both train.
    from conftest import make_rows, write_jsonl

    rows = [{**row, "text_pair": other["text"]} for row, other in zip(make_rows(24, seed=1), make_rows(24, seed=2))]
    data = write_jsonl(rows, tmp_path / "pairs.jsonl")
    student = _student_folder(tmp_path, arch="distilbert")
    out = tmp_path / "student"
    result = CliRunner().invoke(app, [str(a) for a in [
        "distill", "--teacher", teacher_dir, "--student", student, "--data", data, "--text-pair-column",
        "text_pair", "--out", out, "--epochs", "1", "--max-length", "24", "--quiet", "--minilm-weight", "1",
        "--cache-dir", tmp_path / "cache"]])
    assert result.exit_code == 0, result.output
    assert '"model_type": "distilbert"' in (out / "config.json").read_text()


def test_gradient_accumulation_matches_one_big_batch(train_file, tmp_path):
    from safetensors.torch import load_file
    import torch

    teacher_dir = tmp_path / "teacher"  # without dropout, so both runs compute the same thing
    teacher = make_classifier("bert", layers=4)
    teacher.config.hidden_dropout_prob = teacher.config.attention_probs_dropout_prob = 0.0
    teacher.save_pretrained(teacher_dir)
    make_tokenizer().save_pretrained(teacher_dir)
    runner, students = CliRunner(), []
    for accumulation in (1, 4):
        out = tmp_path / f"s{accumulation}"
        result = runner.invoke(app, [str(a) for a in [
            "distill", "--teacher", teacher_dir, "--data", train_file, "--out", out, "--epochs", "1",
            "--student-layers", "1", "--batch-size", "16", "--gradient-accumulation", accumulation,
            "--max-length", "16", "--quiet", "--cache-dir", tmp_path / "cache", "--hard-label-weight", "0"]])
        assert result.exit_code == 0, result.output
        students.append(load_file(out / "model.safetensors"))
    for name in students[0]:  # soft labels only: a per-row mean, so the pieces add up exactly
        torch.testing.assert_close(students[0][name], students[1][name], rtol=1e-4, atol=2e-5, msg=name)
