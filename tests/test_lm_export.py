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
