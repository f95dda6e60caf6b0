"""Causal-LM export with a KV cache: token-for-token parity, quantised targets, generation."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgekd.errors import UserError
from edgekd.lm.export import export_lm, torch_greedy
from edgekd.lm.generate import OnnxDecoder, generate
from edgekd.targets import load_target
from lm_tiny import make_llama, make_lm_tokenizer, save_llama


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-export")
    folder = save_llama(root / "student", layers=2, seed=4)
    artifacts = export_lm(folder, targets=targets("onnx-fp32", "onnx-int8", "onnx-int4", "ort-mobile"),
                          out=root / "export", max_length=40, parity_tokens=8)
    return folder, root / "export", {a.target: a for a in artifacts}


def test_fp32_generates_pytorchs_greedy_tokens(exported):
    folder, export_dir, artifacts = exported
    assert artifacts["onnx-fp32"].exact
    model, tokenizer = make_llama(layers=2, seed=4), make_lm_tokenizer()
    decoder = OnnxDecoder(export_dir / "onnx-fp32")
    for prompt in ("the cat sat on", "w3 w7 a dog ran on the mat w1"):
        expected = torch_greedy(model, tokenizer, [prompt], new_tokens=20)[0]
        produced = decoder.greedy(tokenizer(prompt, add_special_tokens=False)["input_ids"],
                                  new_tokens=20, stop_at_eos=False)
        assert produced == expected


def test_graph_has_cache_inputs_and_outputs(exported):
    _, export_dir, _ = exported
    graph = onnx.load(str(export_dir / "onnx-fp32" / "model.onnx")).graph
    inputs, outputs = [i.name for i in graph.input], [o.name for o in graph.output]
    assert inputs == ["input_ids", "attention_mask", "past_key.0", "past_value.0", "past_key.1", "past_value.1"]
    assert outputs == ["logits", "present_key.0", "present_value.0", "present_key.1", "present_value.1"]


def test_cached_step_equals_a_full_pass(exported):
    _, export_dir, _ = exported
    decoder = OnnxDecoder(export_dir / "onnx-fp32")
    ids = [2, 44, 45, 46, 47, 44, 48]
    full = decoder.all_logits(ids)
    _, presents = decoder.prefill(ids[:-1])
    step_logits, new_presents = decoder.step(ids[-1], presents, len(ids))
    np.testing.assert_allclose(step_logits, full[-1], atol=1e-4, rtol=1e-4)
    assert new_presents[0].shape[2] == len(ids)


def test_quantised_targets_use_quantised_operators(exported):
    _, export_dir, artifacts = exported
    int4_ops = {node.op_type for node in onnx.load(str(export_dir / "onnx-int4" / "model.onnx")).graph.node}
    int8_ops = {node.op_type for node in onnx.load(str(export_dir / "onnx-int8" / "model.onnx")).graph.node}
    assert "MatMulNBits" in int4_ops and "MatMulInteger" in int8_ops
    assert (export_dir / "ort-mobile" / "model.ort").is_file()
    assert artifacts["onnx-int4"].size_bytes < artifacts["onnx-fp32"].size_bytes
    manifest = json.loads((export_dir / "onnx-int4" / "edgekd.json").read_text())
    assert manifest["task"] == "causal-lm" and 0 <= manifest["parity"]["greedy_agreement"] <= 1
    # every target generates from its own folder, .ort included
    for target in ("onnx-int8", "onnx-int4", "ort-mobile"):
        assert len(generate(export_dir / target, "the cat", new_tokens=5).new_tokens) >= 1


def test_prompt_longer_than_exported_maximum(exported):
    _, export_dir, _ = exported
    with pytest.raises(UserError, match="at most 40"):
        generate(export_dir / "onnx-fp32", " ".join(["the"] * 38), new_tokens=5)


def test_unknown_target_and_non_lm_folder(exported, tmp_path, student_dir):
    folder, _, _ = exported
    with pytest.raises(UserError, match=r"target 'onnx-fp16' \(onnx fp16\) cannot be built for a causal LM"):
        export_lm(folder, targets=targets("onnx-fp16"), out=tmp_path / "x")
    with pytest.raises(UserError, match="not a causal language model"):
        export_lm(student_dir, targets=targets("onnx-fp32"), out=tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    with pytest.raises(UserError, match="has no edgekd.json"):
        OnnxDecoder(tmp_path)


def targets(*names: str):
    return [load_target(name) for name in names]


def test_executorch_programs_carry_their_cache_and_fp32_generates_pytorchs_tokens(tmp_path):
    pytest.importorskip("executorch")
    from edgekd.lm.bench import bench_lm
    from edgekd.lm.generate import decoder_for
    from edgekd.lm.generate import PteDecoder

    folder = save_llama(tmp_path / "student", layers=2, seed=4)
    fp32, int4 = export_lm(folder, targets=targets("executorch", "executorch-8da4w"), out=tmp_path / "export",
                           max_length=40, parity_tokens=8)
    assert fp32.exact and fp32.perplexity_ratio is None  # fp32: every greedy token equals PyTorch's
    assert int4.precision == "8da4w" and 1 <= int4.perplexity_ratio <= 2.0 and int4.size_bytes < fp32.size_bytes
    manifest = json.loads((tmp_path / "export" / "executorch-8da4w" / "edgekd.json").read_text())
    assert manifest["inputs"] == {"input_ids": ["1", "1"], "cache_position": ["1"]}
    assert manifest["delegation"]["delegate_calls"] > 0 and manifest["quantization"]["weights"].startswith("int4")
    assert 0 < manifest["greedy_agreement_with_pytorch_same_precision"] <= 1  # against torchao's 8da4w in PyTorch
    decoder = decoder_for(tmp_path / "export" / "executorch")
    assert isinstance(decoder, PteDecoder)
    model, tokenizer = make_llama(layers=2, seed=4), make_lm_tokenizer()
    prompt = tokenizer("w3 w7 a dog ran", add_special_tokens=False)["input_ids"]
    first = decoder.greedy(prompt, new_tokens=12, stop_at_eos=False)
    assert first == torch_greedy(model, tokenizer, [prompt], new_tokens=12)[0]
    assert decoder.greedy(prompt, new_tokens=12, stop_at_eos=False) == first  # a new sequence starts afresh
    report = bench_lm(teacher_dir=folder, student_dir=None, artifacts=tmp_path / "export",
                      texts=["the cat sat on the mat w1 w2 w3"] * 3, max_length=16, new_tokens=4, rounds=1)
    rows = {row["name"]: row for row in report["rows"]}
    assert rows["teacher/executorch"]["runtime"] == "executorch fp32"
    assert rows["teacher/executorch"]["quality"]["perplexity"] == pytest.approx(rows["teacher"]["quality"]["perplexity"],
                                                                                rel=1e-3)


def test_a_sliding_window_decoder_generates_pytorchs_tokens_past_its_window(tmp_path):
    # Gemma 2 alternates sliding-window and full attention layers; the window (6) is far shorter
    # than prompt + generation, so every cached step past it must mask like PyTorch
    import torch
    from transformers import AutoModelForCausalLM, Gemma2Config

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=52, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=6,
                          max_position_embeddings=128, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    assert config.layer_types == ["sliding_attention", "full_attention"]
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(4)  # peaked predictions: greedy tokens are not ties
    model.save_pretrained(tmp_path / "student")
    tokenizer = make_lm_tokenizer()
    tokenizer.save_pretrained(tmp_path / "student")
    (artifact,) = export_lm(tmp_path / "student", targets=targets("onnx-fp32"), out=tmp_path / "export",
                            max_length=40, parity_tokens=8)
    decoder = OnnxDecoder(tmp_path / "export" / "onnx-fp32")
    prompt = "w3 w7 a dog ran on the mat w1 the cat"
    expected = torch_greedy(model, tokenizer, [prompt], new_tokens=16)[0]
    assert decoder.greedy(tokenizer(prompt, add_special_tokens=False)["input_ids"], new_tokens=16,
                          stop_at_eos=False) == expected
    assert artifact.exact
