"""The main commands on a causal LM through typer's runner: the happy path and one line per bad
input; the task is read from the teacher and the student."""

from __future__ import annotations

import json

import pytest

from conftest import assert_clean_error, run_cli as run
from lm_tiny import make_llama, make_lm_tokenizer, make_texts, save_llama


@pytest.fixture
def lm_files(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    teacher = save_llama(tmp_path / "teacher", layers=3, seed=1)
    train = tmp_path / "train.txt"
    train.write_text("\n".join(make_texts(16)))
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"text": t}) + "\n" for t in make_texts(4, seed=2)))
    return teacher, train, test


def test_distill_export_generate_bench(lm_files, tmp_path):
    teacher, train, test = lm_files
    student, export = tmp_path / "student", tmp_path / "export"
    result = run("distill", "--teacher", teacher, "--data", train, "--out", student,
                 "--student-layers", "1", "--max-steps", "4", "--batch-size", "4", "--max-length", "24",
                 "--top-k", "8", "--divergence", "jsd", "--quiet")
    assert result.exit_code == 0, result.output
    assert "B/token" in result.output and (student / "model.safetensors").is_file()
    result = run("export", student, "--out", export, "--target", "onnx-fp32", "--target", "onnx-int4",
                 "--max-length", "64")
    assert result.exit_code == 0, result.output
    assert "greedy tokens equal to PyTorch: 100%" in result.output
    result = run("generate", export / "onnx-int4", "--prompt", "the cat", "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("the cat")
    result = run("bench", "--teacher", teacher, "--student", student, "--artifacts", export,
                 "--data", test, "--out", tmp_path / "report", "--new-tokens", "4", "--rounds", "1",
                 "--max-perplexity-ratio", "100")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == ["teacher", "student", "student/onnx-fp32", "student/onnx-int4"]
    assert rows["student/onnx-fp32"]["quality"]["perplexity"] == pytest.approx(
        rows["student"]["quality"]["perplexity"], rel=1e-3)
    assert rows["student/onnx-fp32"]["perplexity_ratio"] == pytest.approx(1.0, rel=1e-3)  # against the student
    assert 0 <= rows["student/onnx-int4"]["quality"]["top1_agreement"] <= 1
    assert (tmp_path / "report" / "report.md").is_file()
    gated = {(gate["gate"], gate["artifact"]) for gate in report["gates"]}
    assert ("perplexity_ratio", "student/onnx-int4") in gated and all(g["passed"] for g in report["gates"])


def test_vocabulary_mismatch(lm_files, tmp_path):
    teacher, train, _ = lm_files
    other = tmp_path / "other"
    make_llama(layers=1, vocab_size=53).save_pretrained(other)
    make_lm_tokenizer(extra_words=("zebra",)).save_pretrained(other)
    result = run("distill", "--teacher", teacher, "--data", train, "--out", tmp_path / "s",
                 "--student", other, "--max-steps", "1", "--quiet")
    assert_clean_error(result, "tokenizers differ")
    assert not (tmp_path / "s").exists()


def test_teacher_that_is_not_a_causal_lm(lm_files, teacher_dir, tmp_path):
    _, train, _ = lm_files
    result = run("distill", "--task", "causal-lm", "--teacher", teacher_dir, "--data", train,
                 "--out", tmp_path / "s", "--student-layers", "1", "--quiet")
    assert_clean_error(result, "holds a text-classification model, not a causal-lm one; "
                               "pass --task text-classification")


def test_corrupt_gguf(lm_files, tmp_path):
    _, train, _ = lm_files
    broken = tmp_path / "teacher.gguf"
    broken.write_bytes(b"not a gguf file at all")
    result = run("distill", "--teacher", broken, "--data", train, "--out", tmp_path / "s",
                 "--student-layers", "1", "--quiet")
    assert_clean_error(result, "corrupt")


def test_prompt_longer_than_exported_maximum(lm_files, tmp_path):
    teacher, _, _ = lm_files
    assert run("export", teacher, "--out", tmp_path / "e", "--target", "onnx-fp32",
               "--max-length", "16").exit_code == 0
    result = run("generate", tmp_path / "e" / "onnx-fp32", "--prompt", " ".join(["the"] * 14),
                 "--max-new-tokens", "4")
    assert_clean_error(result, "exported for at most 16")


def test_with_tokenizer_reaches_the_causal_lm_export(lm_files, tmp_path):
    """--with-tokenizer serves causal LMs (a prompt encoder); this word-level tokenizer has no
    exact operator: one line naming it, before anything is written."""
    teacher, _, _ = lm_files
    result = run("export", teacher, "--out", tmp_path / "e", "--target", "onnx-fp32", "--with-tokenizer")
    assert_clean_error(result, r"cannot be reproduced exactly .*its model is WordLevel")
    assert not (tmp_path / "e").exists()


def _trained_llama(folder, texts):
    """A tiny Llama that has learnt `texts` (far better than their token frequencies), saved."""
    import torch

    from edgekd.lm.data import collate, encode_texts
    from edgekd.lm.losses import causal_lm_cross_entropy, shift_for_next_token

    model, tokenizer = make_llama(layers=2, seed=3), make_lm_tokenizer()
    examples = encode_texts(texts, tokenizer, max_length=32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(60):
        batch = collate(examples, [(step * 8 + i) % len(examples) for i in range(8)])
        logits, targets, _ = shift_for_next_token(model(input_ids=batch["input_ids"]).logits, batch["labels"])
        loss = causal_lm_cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer, examples


def test_a_causal_lm_student_that_learnt_nothing_fails_loudly(tmp_path, monkeypatch):
    from edgekd.lm.train import mean_cross_entropy, poor_student, unigram_cross_entropy

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    texts = make_texts(48)
    teacher, _, examples = _trained_llama(tmp_path / "teacher", texts)
    guess = unigram_cross_entropy(examples)
    assert mean_cross_entropy(teacher, examples, vocabulary=52) < guess  # the teacher learnt the text
    assert poor_student(teacher, teacher, examples, vocabulary=52) is None
    (tmp_path / "train.txt").write_text("\n".join(texts))
    common = ["distill", "--teacher", tmp_path / "teacher", "--data", tmp_path / "train.txt", "--student-config",
              "hidden=16,heads=2,layers=1,intermediate=32", "--student-init", "random", "--max-steps", "4",
              "--max-length", "32", "--lr", "1e-9", "--top-k", "8", "--quiet"]
    result = run(*common, "--out", tmp_path / "poor")
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: the student learnt nothing useful") and "token frequencies" in last
    assert (tmp_path / "poor" / "model.safetensors").is_file()  # kept for a look, but the run failed
    allowed = run(*common, "--out", tmp_path / "allowed", "--allow-poor-student")
    assert allowed.exit_code == 0, allowed.output
    assert "warning: the student learnt nothing useful" in allowed.output


def test_a_trimmed_causal_lm_distils_exports_and_benches_on_its_own_tokens(lm_files, tmp_path):
    """--trim-vocab for a causal LM: embedding and output head trimmed; bench scores the same
    held-out text in the student's own tokens, per teacher token, and reports coverage."""
    teacher, train, test = lm_files
    student, export = tmp_path / "student", tmp_path / "export"
    result = run("distill", "--teacher", teacher, "--data", train, "--out", student, "--student-layers", "1",
                 "--max-steps", "4", "--batch-size", "4", "--max-length", "24", "--top-k", "8", "--trim-vocab",
                 "--quiet", "--allow-poor-student")
    assert result.exit_code == 0, result.output
    assert "vocabulary trimmed to" in result.output
    config = json.loads((student / "config.json").read_text())
    kept = json.loads((student / "vocabulary.json").read_text())["kept_tokens"]
    assert config["vocab_size"] == kept < 52
    result = run("export", student, "--out", export, "--target", "onnx-fp32", "--max-length", "64")
    assert result.exit_code == 0, result.output
    (tmp_path / "unseen.txt").write_text("the cat sat on the zebra mat\na dog ran on a mat")
    result = run("bench", "--teacher", teacher, "--student", student, "--artifacts", export,
                 "--data", tmp_path / "unseen.txt", "--out", tmp_path / "report", "--new-tokens", "4",
                 "--rounds", "1", "--max-perplexity-ratio", "1000")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads((tmp_path / "report" / "report.json").read_text())["rows"]}
    assert rows["teacher"]["vocabulary"] is None
    assert rows["student"]["vocabulary"]["kept_tokens"] == kept
    assert rows["student"]["quality"]["tokens"] == rows["teacher"]["quality"]["tokens"]  # per teacher token
    assert rows["student/onnx-fp32"]["quality"]["perplexity"] == pytest.approx(
        rows["student"]["quality"]["perplexity"], rel=1e-3)
