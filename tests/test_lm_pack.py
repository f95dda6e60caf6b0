"""--pack: causal-LM texts joined with end-of-text tokens and cut into full sequences."""

from __future__ import annotations

import json

import pytest

from conftest import assert_clean_error, make_classifier, make_rows, make_tokenizer, run_cli as run, write_jsonl
from lm_tiny import make_lm_tokenizer, make_texts, save_llama

from edgekd.errors import UserError
from edgekd.lm.data import encode_texts


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_packing_keeps_every_token_in_full_sequences():
    tokenizer = make_lm_tokenizer()
    texts = make_texts(30, seed=3) + [" ".join(["the cat sat on the mat"] * 12)]  # one text of 72 tokens
    packed = encode_texts(texts, tokenizer, max_length=16, pack=True)
    expected = [token for text in texts for token in _ids(tokenizer, text) + [tokenizer.eos_token_id]]
    joined = [token for row in packed.input_ids for token in row]
    # no token lost (a last piece of a single token, with nothing to predict, is the only loss allowed)
    assert joined == expected[:len(joined)] and len(expected) - len(joined) <= 1
    assert all(len(row) == 16 for row in packed.input_ids[:-1]) and 2 <= len(packed.input_ids[-1]) <= 16
    assert all(all(flags) for flags in packed.learnt)  # no prompt: every token is learnt
    # unpacked, the long text is cut to 16 tokens and its other 56 are lost
    plain = encode_texts(texts, tokenizer, max_length=16)
    assert sum(map(len, plain.input_ids)) < len(joined) and max(map(len, plain.input_ids)) == 16
    assert len(plain.input_ids) == len(texts)


def test_packing_keeps_prompts_out_of_the_loss():
    tokenizer = make_lm_tokenizer()
    texts, prompts = ["the cat sat", "a dog ran on a mat"], ["w1 w2", "w3"]
    packed = encode_texts(texts, tokenizer, max_length=5, prompts=prompts, pack=True)
    flags = [flag for row in packed.learnt for flag in row]
    # w1 w2 | the cat sat </s> | w3 | a dog ran on a mat </s>
    assert flags == [False, False, True, True, True, True, False] + [True] * 7
    assert [len(row) for row in packed.input_ids] == [5, 5, 4]


def test_packing_needs_an_end_of_text_token():
    tokenizer = make_tokenizer()  # a BERT word-piece tokenizer: no end-of-text token
    tokenizer.pad_token_id  # noqa: B018 - it has a pad token, so plain encoding works
    with pytest.raises(UserError, match="--pack joins texts with the end-of-text token"):
        encode_texts(["w1 w2 w3"], tokenizer, max_length=8, pack=True)


def test_distill_with_pack_trains_on_full_sequences(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    teacher = save_llama(tmp_path / "teacher", layers=3, seed=1)
    train = tmp_path / "train.txt"
    train.write_text("\n".join(make_texts(24)))
    result = run(*["distill", "--teacher", str(teacher), "--data", str(train), "--out", str(tmp_path / "student"),
                  "--student-layers", "1", "--max-length", "16", "--batch-size", "4", "--epochs", "1",
                  "--top-k", "8", "--pack", "--quiet", "--allow-poor-student"])
    assert result.exit_code == 0, result.output
    tokenizer = make_lm_tokenizer()
    sequences = encode_texts(make_texts(24), tokenizer, max_length=16, pack=True)
    records = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    steps = [record for record in records if "loss" in record]
    assert len(steps) == -(-len(sequences) // 4)  # one epoch over the packed sequences, not the 24 texts
    assert -(-len(sequences) // 4) != -(-24 // 4)  # the count tells packed sequences from texts


def test_pack_is_an_option_of_causal_lms_only(tmp_path):
    teacher = tmp_path / "teacher"
    make_classifier("bert", layers=2).save_pretrained(teacher)
    make_tokenizer().save_pretrained(teacher)
    data = write_jsonl(make_rows(16, seed=1), tmp_path / "train.jsonl")
    result = run(*["distill", "--teacher", str(teacher), "--data", str(data), "--out", str(tmp_path / "student"),
                  "--pack"])
    assert_clean_error(result, "--pack is an option of --task causal-lm only")
