"""Top-k teacher cache and the causal-LM distillation loop, on tiny Llama models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgekd.errors import UserError
from edgekd.training.cache import open_or_build_top_k as open_or_build
from edgekd.lm.data import collate, encode_texts
from edgekd.lm.losses import distillation_loss, shift_for_next_token
from edgekd.lm.models import make_lm_student
from edgekd.config import LMDistillConfig
from edgekd.lm.train import distill_lm, step_loss
from lm_tiny import make_llama, make_lm_tokenizer, make_texts


@pytest.fixture
def setup():
    tokenizer = make_lm_tokenizer()
    teacher = make_llama(layers=3, seed=1)
    examples = encode_texts(make_texts(24), tokenizer, max_length=24)
    return teacher, tokenizer, examples


def test_prompt_and_padding_are_not_learnt():
    tokenizer = make_lm_tokenizer()
    examples = encode_texts(["the cat sat", "a dog ran on a mat"], tokenizer, max_length=10,
                            prompts=["w1 w2", "w3"])
    batch = collate(examples, [0, 1])
    assert batch["labels"][0].tolist()[:2] == [-100, -100] and batch["labels"][0, 2] != -100
    assert (batch["labels"][0, 5:] == -100).all() and (batch["attention_mask"][0, 5:] == 0).all()
    assert examples.predicted_tokens == 3 + 6


def test_cache_holds_the_teachers_top_k_compactly(setup, tmp_path):
    teacher, tokenizer, examples = setup
    cache = open_or_build(teacher, examples, top_k=8, temperature=2.0, vocabulary=52,
                          root=tmp_path, show_progress=False)
    stored = {name: [np.load(path) for path in sorted(cache.folder.glob(f"shard-*/{name}.npy"))]
              for name in ("token_ids", "log_probs")}
    assert {a.dtype for a in stored["token_ids"]} == {np.dtype(np.uint16)}
    assert {a.dtype for a in stored["log_probs"]} == {np.dtype(np.float16)} and cache.bytes_per_token == 8 * 2 + 8 * 2
    assert sum(a.shape[0] for a in stored["token_ids"]) == sum(len(ids) - 1 for ids in examples.input_ids)
    assert {a.shape[1] for name in stored for a in stored[name]} == {8}
    batch = collate(examples, [3, 4])
    ids, log_probs = cache.gather([3, 4], width=batch["input_ids"].shape[1])
    with torch.no_grad():
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = F.log_softmax(logits[:, :-1] / 2.0, -1).topk(8, dim=-1)
    length = int(batch["attention_mask"][0].sum()) - 1
    assert torch.equal(ids[0, :length], expected.indices[0, :length])
    torch.testing.assert_close(log_probs[0, :length], expected.values[0, :length], atol=2e-2, rtol=1e-3)
    # opened, not rebuilt, the second time
    stamp = (cache.folder / "shard-00000" / "token_ids.npy").stat().st_mtime_ns
    again = open_or_build(teacher, examples, top_k=8, temperature=2.0, vocabulary=52,
                          root=tmp_path, show_progress=False)
    assert again.folder == cache.folder and (again.folder / "shard-00000" / "token_ids.npy").stat().st_mtime_ns == stamp


def test_full_k_cache_gives_the_dense_loss(setup, tmp_path):
    teacher, tokenizer, examples = setup
    student = make_llama(layers=1, seed=2)
    config = LMDistillConfig(hard_label_weight=0.0, top_k=52, temperature=1.5, divergence="jsd", beta=0.3)
    cache = open_or_build(teacher, examples, top_k=52, temperature=1.5, vocabulary=52,
                          root=tmp_path, show_progress=False)
    batch = collate(examples, [0, 5, 7])
    with torch.no_grad():
        sparse = step_loss(student, batch, teacher=None, cache=cache, vocabulary=52, config=config)
        dense = step_loss(student, batch, teacher=teacher, cache=None, vocabulary=52,
                          config=LMDistillConfig(hard_label_weight=0.0, top_k=0, temperature=1.5,
                                                 divergence="jsd", beta=0.3))
    torch.testing.assert_close(sparse, dense, atol=2e-3, rtol=2e-3)


def test_padding_does_not_change_the_loss(setup):
    teacher, tokenizer, examples = setup
    student = make_llama(layers=1, seed=2)
    config = LMDistillConfig(hard_label_weight=0.5, top_k=0)
    short = min(range(len(examples)), key=lambda i: len(examples.input_ids[i]))
    long = max(range(len(examples)), key=lambda i: len(examples.input_ids[i]))
    with torch.no_grad():
        alone = step_loss(student, collate(examples, [short]), teacher=teacher, cache=None,
                          vocabulary=52, config=config)
        padded = collate(examples, [short, long])
        for name in ("input_ids", "attention_mask", "labels"):
            padded[name] = padded[name][:1]  # the short example, padded to the long one's width
        with_padding = step_loss(student, padded, teacher=teacher, cache=None, vocabulary=52, config=config)
    torch.testing.assert_close(alone, with_padding, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("top_k", [0, 8])
def test_distillation_moves_the_student_towards_the_teacher(setup, tmp_path, top_k):
    teacher, tokenizer, examples = setup
    student, _ = make_lm_student(teacher, tokenizer, layers="1")
    batch = collate(examples, list(range(8)))

    def divergence(model):
        with torch.no_grad():
            student_logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        shifted, _, mask = shift_for_next_token(student_logits, batch["labels"])
        return distillation_loss(shifted, teacher_logits[:, :-1], mask=mask).item()

    before = divergence(student)
    config = LMDistillConfig(max_steps=30, lr=3e-3, batch_size=8, hard_label_weight=0.0, top_k=top_k, device="cpu")
    result = distill_lm(teacher=teacher, student=student, tokenizer=tokenizer, train=examples,
                        config=config, out=tmp_path / "student", vocabulary=52, show_progress=False,
                        cache_root=tmp_path / "cache")
    assert divergence(student) < 0.7 * before
    assert (result.student_dir / "model.safetensors").is_file()
    records = [json.loads(line) for line in (result.student_dir / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in records if "loss" in r]) == 30  # one a step, then one an epoch (as for classifiers)
    assert [r["epoch"] for r in records if "validation" in r] == list(range(1, 11))  # 3 batches an epoch
    assert result.cache_bytes_per_token == (32 if top_k else 0)


def test_cross_entropy_only_without_teacher(setup, tmp_path):
    _, tokenizer, examples = setup
    student = make_llama(layers=1, seed=3)
    config = LMDistillConfig(max_steps=20, lr=3e-3, hard_label_weight=1.0, device="cpu")
    result = distill_lm(teacher=None, student=student, tokenizer=tokenizer, train=examples, config=config,
                        out=tmp_path / "ce", vocabulary=52, show_progress=False)
    losses = [record["loss"] for record in map(json.loads, (result.student_dir / "metrics.jsonl").read_text().splitlines())
              if "loss" in record]
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("options, message", [({"divergence": "kl"}, "divergence"),
                                              ({"beta": 1.5}, "beta"), ({"top_k": -1}, "top-k"),
                                              ({"hard_label_weight": 2.0}, "hard-label-weight")])
def test_config_is_range_checked(options, message):
    with pytest.raises(UserError, match=message):
        LMDistillConfig(**options)


def test_a_damaged_top_k_cache_is_rebuilt_not_read(setup, tmp_path, capsys):
    teacher, _, examples = setup
    options = dict(top_k=4, temperature=1.0, vocabulary=52, root=tmp_path, show_progress=False)
    built = open_or_build(teacher, examples, **options)
    expected = built.gather([0, 1], width=24)
    damaged = built.folder / "shard-00000" / "log_probs.npy"
    np.save(damaged, np.zeros_like(np.load(damaged)))
    capsys.readouterr()
    rebuilt = open_or_build(teacher, examples, **options)
    assert "log_probs.npy does not match its checksum); rebuilding" in capsys.readouterr().err
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.gather([0, 1], width=24), expected))
