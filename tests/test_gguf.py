"""GGUF targets for llama.cpp: the student's weights, hyper-parameters and tokenizer in one file,
read back by transformers' own GGUF reader to check it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import assert_clean_error, run_cli
from lm_tiny import make_byte_level_tokenizer, make_llama, make_texts, save_llama


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    tokenizer = make_byte_level_tokenizer()
    model = make_llama(layers=2, vocab_size=len(tokenizer), tie=True, seed=3)
    model.save_pretrained(root / "student")
    tokenizer.save_pretrained(root / "student")
    (root / "held.txt").write_text("\n".join(make_texts(30, seed=3)))
    result = run_cli("export", root / "student", "--target", "gguf-f16", "--target", "gguf-q8_0",
                     "--data", root / "held.txt", "--out", root / "export", "--quiet")
    assert result.exit_code == 0, result.output
    return root, model, tokenizer


def test_f16_read_back_gives_pytorchs_greedy_tokens_and_the_same_token_ids(exported):
    from edgekd.lm.export import torch_greedy
    from edgekd.lm.gguf import read_back

    root, model, tokenizer = exported
    back, back_tokenizer = read_back(root / "export" / "gguf-f16" / "model.gguf")
    prompts = ["the cat sat on", "Ünïcödé café, 日本語 😀 don't w3 w7"]
    for prompt in prompts:  # the tokenizer inside the file splits text as the student's does
        assert back_tokenizer(prompt, add_special_tokens=False)["input_ids"] == \
            tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert torch_greedy(back, tokenizer, prompts, new_tokens=12) == torch_greedy(model, tokenizer, prompts,
                                                                                  new_tokens=12)
    ids = torch.tensor([tokenizer(prompts[0], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        difference = (back(input_ids=ids).logits - model(input_ids=ids).logits).abs().max().item()
    assert difference < 5e-3  # f16 weights
    manifest = json.loads((root / "export" / "gguf-f16" / "edgekd.json").read_text())
    assert manifest["parity"]["exact"] and manifest["format"] == "gguf" and manifest["precision"] == "fp16"


def test_q8_0_holds_its_perplexity_budget_at_about_half_the_f16_size(exported):
    import gguf

    root, _, _ = exported
    manifest = json.loads((root / "export" / "gguf-q8_0" / "edgekd.json").read_text())
    gate = manifest["perplexity_gate"]
    assert gate["ratio"] <= gate["max_ratio"] == 1.05 and gate["source"].endswith("held.txt")
    sizes = {name: (root / "export" / name / "model.gguf").stat().st_size for name in ("gguf-f16", "gguf-q8_0")}
    assert sizes["gguf-q8_0"] < 0.65 * sizes["gguf-f16"]
    reader = gguf.GGUFReader(str(root / "export" / "gguf-q8_0" / "model.gguf"))
    types = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["output_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied: llama.cpp reads the embedding as the output layer
    fields = {name: field for name, field in reader.fields.items()}
    assert bytes(fields["tokenizer.ggml.model"].parts[-1]).decode() == "gpt2"
    assert int(np.asarray(fields["llama.block_count"].parts[-1])[0]) == 2


def test_a_tokenizer_or_model_a_gguf_file_cannot_hold_is_one_line_and_nothing_is_written(tmp_path, student_dir):
    save_llama(tmp_path / "word-level", layers=2)  # a word-level tokenizer: not byte-level BPE
    result = run_cli("export", tmp_path / "word-level", "--target", "gguf-q8_0", "--out", tmp_path / "out")
    assert_clean_error(result, "the GGUF writer stores byte-level BPE tokenizers .*not a WordLevel tokenizer; "
                               "nothing was written")
    assert not (tmp_path / "out").exists()
    result = run_cli("export", student_dir, "--target", "gguf-f16", "--out", tmp_path / "out")  # a classifier
    assert_clean_error(result, "gguf-f16")
    assert not (tmp_path / "out").exists()

    from transformers import GPT2Config, GPT2LMHeadModel

    from edgekd.errors import UserError
    from edgekd.lm.gguf import check_writable

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=320))
    with pytest.raises(UserError, match="GGUF targets serve llama, qwen2 decoders; a gpt2 student"):
        check_writable(gpt2, make_byte_level_tokenizer())


def _bench(root, out) -> dict:
    """The report of bench on the student and every artifact exported from it."""
    result = run_cli("bench", "--teacher", root / "student", "--student", root / "student", "--artifacts",
                     root / "export", "--data", root / "held.txt", "--out", out, "--rounds", "1",
                     "--new-tokens", "4", "--quiet")
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())


def test_bench_skips_a_gguf_file_where_llama_cpp_is_not_installed(exported, tmp_path, monkeypatch):
    import edgekd.lm.gguf

    monkeypatch.setattr(edgekd.lm.gguf, "llama_cpp_installed", lambda: False)
    root, _, _ = exported
    report = _bench(root, tmp_path / "report")
    assert {row["name"] for row in report["rows"]} == {"teacher", "student"}
    assert len(report["skipped"]) == 2 and "llama-perplexity and llama-bench" in report["skipped"][0]["reason"]


def test_q4_k_m_needs_llama_cpps_quantiser_in_one_line(exported, tmp_path, monkeypatch):
    import edgekd.lm.gguf

    monkeypatch.setattr(edgekd.lm.gguf, "llama_cpp_installed", lambda: False)
    root, _, _ = exported
    result = run_cli("export", root / "student", "--target", "gguf-q4_k_m", "--out", tmp_path / "out")
    assert_clean_error(result, r"Q4_K_M is made by llama.cpp's quantiser: pip install 'edgekd\[llama\]'")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- llama.cpp itself (make test-llama)

@pytest.fixture(scope="module")
def with_llama_cpp(exported):
    pytest.importorskip("llama_cpp", reason="llama.cpp is the llama extra: make test-llama")
    root, model, tokenizer = exported
    result = run_cli("export", root / "student", "--target", "gguf-q4_k_m", "--data", root / "held.txt",
                     "--out", root / "export", "--quiet")
    assert result.exit_code == 0, result.output
    return root, model, tokenizer


def test_llama_cpp_runs_the_f16_file_as_pytorch_runs_the_student(with_llama_cpp):
    from edgekd.lm.generate import LlamaCppDecoder

    root, model, tokenizer = with_llama_cpp
    decoder = LlamaCppDecoder(root / "export" / "gguf-f16")
    ids = tokenizer(" ".join(make_texts(2, seed=4)), add_special_tokens=False)["input_ids"][:40]
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    logits = decoder.all_logits(ids)
    assert np.abs(logits - expected).max() < 0.05 * np.abs(expected).max()  # f16 weights and key/value cache
    assert (logits.argmax(-1) == expected.argmax(-1)).mean() > 0.95


def test_q4_k_m_is_made_by_llama_cpp_and_held_to_its_perplexity_budget_by_it(with_llama_cpp):
    import gguf

    root, _, _ = with_llama_cpp
    manifest = json.loads((root / "export" / "gguf-q4_k_m" / "edgekd.json").read_text())
    gate = manifest["perplexity_gate"]
    assert gate["ratio"] <= gate["max_ratio"] == 1.3 and manifest["checked_with"] == "llama.cpp"
    assert manifest["gguf"]["quantised_by"] == "llama.cpp"
    assert "Q4_K_M" in manifest["quantization"]["scheme"]
    sizes = {name: (root / "export" / name / "model.gguf").stat().st_size for name in ("gguf-q8_0", "gguf-q4_k_m")}
    assert sizes["gguf-q4_k_m"] < sizes["gguf-q8_0"]
    reader = gguf.GGUFReader(str(root / "export" / "gguf-q4_k_m" / "model.gguf"))
    types = {tensor.tensor_type.name for tensor in reader.tensors}
    assert types - {"F32", "F16", "Q8_0"}  # llama.cpp's own smaller types (K-quants need rows of 256)
    assert not list((root / "export" / "gguf-q4_k_m").glob("*.f16.gguf"))  # the f16 step is not shipped


def test_bench_measures_gguf_files_with_llama_cpp(with_llama_cpp, tmp_path):
    root, _, _ = with_llama_cpp
    report = _bench(root, tmp_path / "report")
    rows = {row["target"]: row for row in report["rows"] if row["format"] == "gguf"}
    assert set(rows) == {"gguf-f16", "gguf-q8_0", "gguf-q4_k_m"} and not report["skipped"]
    f16, q4 = rows["gguf-f16"], rows["gguf-q4_k_m"]
    student = next(row for row in report["rows"] if row["name"] == "student")
    assert f16["runtime"] == "llama.cpp fp16" and q4["runtime"] == "llama.cpp q4_k_m"
    assert f16["quality"]["perplexity"] == pytest.approx(student["quality"]["perplexity"], rel=0.02)
    assert q4["latency"]["decode_tokens_per_second"] > 0 and q4["memory"]["peak_rss_mb"] > 0
