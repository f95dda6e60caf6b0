"""Dynamic int8 for causal LMs held to a perplexity budget (edgekd/lm/quantize.py), and the
perplexity gate on quantised exports: golden quantisation values, the graph equal to ONNX
Runtime's own quantiser, and a planted outlier that the search must find and keep float."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from conftest import assert_clean_error, run_cli as run
from edgekd.errors import GateFailed, UserError
from edgekd.lm.export import export_fp32, export_lm, sampled_texts
from edgekd.lm.models import load_causal_lm
from edgekd.lm.quantize import Int8Builder, SequenceScorer, quantize_weight, save_onnx, weight_matmuls
from edgekd.targets import load_target
from lm_tiny import make_llama, make_lm_tokenizer, make_texts


def test_weights_quantise_per_output_column_symmetrically():
    weight = np.array([[1.0, -2.0], [0.5, 4.0], [0.0, 0.0]], dtype=np.float32)
    values, scale = quantize_weight(weight)
    np.testing.assert_allclose(scale, [1 / 127, 4 / 127], rtol=1e-7)
    # 0.5 * 127 = 63.5 and -2 * 127 / 4 = -63.5 round half to even, as ONNX Runtime's quantiser does
    np.testing.assert_array_equal(values, [[127, -64], [64, 127], [0, 0]])
    assert values.dtype == np.int8
    values, scale = quantize_weight(np.zeros((3, 2), np.float32))  # an all-zero column keeps scale 1
    np.testing.assert_array_equal(scale, [1, 1])


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm-int8") / "model.onnx"
    export_fp32(make_llama(layers=2, seed=4), path)
    return path


def test_the_int8_graph_equals_onnxruntimes_dynamic_quantiser(fp32_model, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ours, theirs = tmp_path / "ours.onnx", tmp_path / "theirs.onnx"
    model = onnx.load(str(fp32_model))
    save_onnx(Int8Builder(model).build(), ours)
    quantize_dynamic(str(fp32_model), str(theirs), op_types_to_quantize=["MatMul"], per_channel=True,
                     weight_type=QuantType.QInt8)
    ops = [node.op_type for node in onnx.load(str(ours)).graph.node]
    assert ops.count("MatMulInteger") == len(weight_matmuls(model.graph)) == 15  # 2 x 7 + lm_head
    assert ops.count("DynamicQuantizeLinear") == 2 * 4 + 1  # q/k/v share one input, gate/up another
    ids = make_lm_tokenizer()(make_texts(1, seed=3)[0])["input_ids"]
    logits = [SequenceScorer(path).session.run(["logits"], SequenceScorer(path).feed(ids))[0]
              for path in (ours, theirs)]
    np.testing.assert_allclose(logits[0], logits[1], rtol=0, atol=1e-5)
    kept = {weight_matmuls(model.graph)[0].output}  # one MatMul kept float: its float weight stays
    rebuilt = Int8Builder(model).build(kept)
    assert [n.op_type for n in rebuilt.graph.node].count("MatMulInteger") == 14
    assert weight_matmuls(model.graph)[0].weight in {t.name for t in rebuilt.graph.initializer}


def save(model, folder):
    model.save_pretrained(folder)
    make_lm_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def outlier_student(tmp_path_factory):
    """A tiny Llama with peaked predictions whose lm_head input has one channel 1000x the
    others (moved from the final norm into lm_head: the fp32 function is unchanged).
    Per-tensor int8 activations and 4-bit blocks both wreck lm_head; smoothing can fold
    the channel back into the norm's weight."""
    model = make_llama(layers=2, seed=4)
    with torch.no_grad():
        model.lm_head.weight.mul_(4)
        model.model.norm.weight[0] /= 1000
        model.lm_head.weight[:, 0] *= 1000
    return save(model, tmp_path_factory.mktemp("outlier") / "student")


@pytest.fixture(scope="module")
def attention_outlier_student(tmp_path_factory):
    """The same peaked Llama with the outlier at the input of layer 1's o_proj instead
    (value channel 3 of key/value head 0 x1000, o_proj's matching columns / 1000): the
    attention output comes through a reshape, so no exact fold exists and the search
    must keep o_proj float."""
    model = make_llama(layers=2, seed=4)
    attention = model.model.layers[1].self_attn
    head_dim, groups = 8, 2  # 32 wide, 4 heads, 2 key/value heads
    with torch.no_grad():
        model.lm_head.weight.mul_(4)
        attention.v_proj.weight[3] *= 1000
        for head in range(groups):  # the query heads that read key/value head 0
            attention.o_proj.weight[:, head * head_dim + 3] /= 1000
    return save(model, tmp_path_factory.mktemp("attention-outlier") / "student")


def test_smoothing_keeps_the_function_and_moves_the_outlier_into_lm_head(outlier_student, tmp_path):
    from edgekd.lm.quantize import smooth

    path = tmp_path / "model.onnx"
    model, _ = load_causal_lm(outlier_student, role="student")
    export_fp32(model, path)
    graph = onnx.load(str(path))
    texts = sampled_texts(model, make_lm_tokenizer(), count=4, tokens=24)
    sites = weight_matmuls(graph.graph)
    before = dict((site.node, error) for site, error in Int8Builder(graph).ranked_errors(texts, threads=1))
    assert max(before, key=before.get) == "/model/lm_head/MatMul" and before["/model/lm_head/MatMul"] > 0.5
    smoothed = smooth(graph, sites, texts, threads=1)
    assert smoothed == 2 * 3 + 1  # per layer q/k/v, gate/up and down; lm_head; never o_proj
    save_onnx(graph, tmp_path / "smoothed.onnx")
    logits = [SequenceScorer(p).session.run(["logits"], SequenceScorer(p).feed(texts[0]))[0]
              for p in (path, tmp_path / "smoothed.onnx")]
    np.testing.assert_allclose(logits[1], logits[0], rtol=1e-4, atol=1e-3)
    after = dict((site.node, error) for site, error in Int8Builder(graph).ranked_errors(texts, threads=1))
    assert after["/model/lm_head/MatMul"] < before["/model/lm_head/MatMul"] / 10


def test_int8_of_a_norm_outlier_needs_no_float_matmul(outlier_student, tmp_path):
    artifact, = export_lm(outlier_student, targets=targets("onnx-int8"), out=tmp_path / "e",
                          max_length=40, parity_tokens=8, show_progress=False)
    manifest = json.loads((tmp_path / "e" / "onnx-int8" / "edgekd.json").read_text())
    search, gate = manifest["int8_search"], manifest["perplexity_gate"]
    assert search["smoothed_activations"] == 7 and search["kept_float"] == [] and artifact.kept_float == 0
    assert gate["ratio"] <= gate["max_ratio"] == 1.1 and artifact.perplexity_ratio == gate["ratio"]
    assert gate["source"] == "8 texts sampled from the fp32 student" and gate["texts"] == 8


def test_int8_search_keeps_the_attention_outlier_matmul_float(attention_outlier_student, tmp_path):
    artifact, = export_lm(attention_outlier_student, targets=targets("onnx-int8"), out=tmp_path / "e",
                          max_length=40, parity_tokens=8, show_progress=False)
    manifest = json.loads((tmp_path / "e" / "onnx-int8" / "edgekd.json").read_text())
    search, gate = manifest["int8_search"], manifest["perplexity_gate"]
    worst = "/model/model/layers.1/self_attn/o_proj/MatMul"
    assert search["worst_matmuls"][0]["node"] == worst
    assert search["probes"][0]["kept_float"] == 0
    assert search["probes"][0]["perplexity"] > 1.1 * search["fp32_perplexity"]  # all int8: over budget
    assert search["kept_float"] == [worst] and artifact.kept_float == 1
    assert gate["ratio"] <= 1.1
    ops = [node.op_type for node in onnx.load(str(tmp_path / "e" / "onnx-int8" / "model.onnx")).graph.node]
    assert ops.count("MatMulInteger") == 14


def test_int4_over_its_budget_fails_and_writes_nothing(outlier_student, tmp_path):
    with pytest.raises(GateFailed, match=r"target 'onnx-int4': perplexity .* over its budget of 2x"):
        export_lm(outlier_student, targets=targets("onnx-fp32", "onnx-int4"), out=tmp_path / "e",
                  max_length=40, parity_tokens=8, show_progress=False)
    # each target folder is written whole or not at all, as for classifiers
    assert (tmp_path / "e" / "onnx-fp32" / "edgekd.json").is_file()
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["onnx-fp32"]


def test_sampled_gate_text_is_reproducible():
    model, tokenizer = make_llama(layers=1, seed=2), make_lm_tokenizer()
    first = sampled_texts(model, tokenizer, count=3, tokens=12)
    assert first == sampled_texts(model, tokenizer, count=3, tokens=12)
    assert [len(ids) for ids in first] == [12, 12, 12] and all(ids[0] == tokenizer.bos_token_id for ids in first)
    assert len({tuple(ids) for ids in first}) == 3  # sampled, not greedy
    assert first != sampled_texts(model, tokenizer, count=3, tokens=12, seed=1)


def test_export_holds_int8_to_the_users_text_and_ratio(outlier_student, tmp_path):
    held = tmp_path / "held.txt"
    held.write_text("\n".join(make_texts(6, seed=5)))
    result = run("export", outlier_student, "--target", "onnx-fp32", "--target", "onnx-int8", "--data", held,
                 "--max-perplexity-ratio", "1.05", "--max-length", "40", "--out", tmp_path / "e")
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.output and "x fp32" in result.output
    gate = json.loads((tmp_path / "e" / "onnx-int8" / "edgekd.json").read_text())["perplexity_gate"]
    assert gate["source"] == str(held) and gate["texts"] == 6 and gate["max_ratio"] == 1.05
    assert gate["ratio"] <= 1.05
    assert "perplexity_gate" not in json.loads((tmp_path / "e" / "onnx-fp32" / "edgekd.json").read_text())
    result = run("export", outlier_student, "--target", "onnx-int8", "--max-perplexity-ratio", "0.9",
                 "--out", tmp_path / "f")
    assert_clean_error(result, "--max-perplexity-ratio 0.9 is below 1")
    assert not (tmp_path / "f").exists()


def test_a_budget_below_one_is_refused_before_any_work(outlier_student, tmp_path):
    with pytest.raises(UserError, match="below 1"):
        export_lm(outlier_student, targets=targets("onnx-int8"), out=tmp_path / "e", max_perplexity_ratio=0.99)


def targets(*names: str):
    return [load_target(name) for name in names]
