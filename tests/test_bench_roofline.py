"""Roofline arithmetic: operation counts on graphs counted by hand, the peak and its cache."""

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, save

from edgekd.benchmarking import roofline


def test_matmul_operations_by_hand():
    assert roofline.matmul_operations((8, 16), (16, 32)) == 2 * 8 * 16 * 32
    # batched with broadcasting: (2, 3) batches of (5 x 7) @ (7 x 4)
    assert roofline.matmul_operations((2, 3, 5, 7), (1, 3, 7, 4)) == 2 * 6 * 5 * 7 * 4
    assert roofline.matmul_operations((4, 16), (32, 16), transpose_b=True) == 2 * 4 * 16 * 32
    assert roofline.matmul_operations((16, 4), (16, 32), transpose_a=True) == 2 * 4 * 16 * 32
    assert roofline.matmul_operations((16,), (16, 32)) == 2 * 16 * 32  # vector @ matrix


def hand_counted_graph(path):
    """input_ids (1, s) -> embeddings (1, s, 16) -> MatMul 16x32 -> Gemm (s, 32)x(8, 32)^T,
    and an int8 MatMulInteger of the quantised embeddings with a 16x4 weight."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["embedded"]),  # (1, s, 16)
        helper.make_node("MatMul", ["embedded", "w1"], ["hidden"]),  # (1, s, 32)
        helper.make_node("Reshape", ["hidden", "flat_shape"], ["flat"]),  # (s, 32)
        helper.make_node("Gemm", ["flat", "w2", "b2"], ["projected"], transB=1),  # (s, 8)
        helper.make_node("DynamicQuantizeLinear", ["embedded"], ["q", "q_scale", "q_zero"]),
        helper.make_node("MatMulInteger", ["q", "w3"], ["integer"]),  # (1, s, 4)
        helper.make_node("ReduceSum", ["projected", "axis0"], ["logits"], keepdims=1),
    ]
    initializers = [numpy_helper.from_array(rng.standard_normal((50, 16)).astype(np.float32), "table"),
                    numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1"),
                    numpy_helper.from_array(np.array([-1, 32], np.int64), "flat_shape"),
                    numpy_helper.from_array(rng.standard_normal((8, 32)).astype(np.float32), "w2"),
                    numpy_helper.from_array(np.zeros(8, np.float32), "b2"),
                    numpy_helper.from_array(rng.integers(-100, 100, (16, 4)).astype(np.int8), "w3"),
                    numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    graph = helper.make_graph(
        nodes, "hand", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("integer", TensorProto.INT32, None)], initializer=initializers)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("sequence", [1, 10])
def test_onnx_operations_on_a_graph_counted_by_hand(tmp_path, sequence):
    path = hand_counted_graph(tmp_path / "hand.onnx")
    counts = roofline.onnx_operations(path, {"input_ids": np.arange(sequence, dtype=np.int64)[None]})
    assert counts == {"fp32": 2 * sequence * 16 * 32 + 2 * sequence * 32 * 8,
                      "int8": 2 * sequence * 16 * 4}


def test_efficiency_is_ideal_time_over_measured_time():
    peak = {"fp32_gops": 100.0, "int8_gops": 400.0}
    result = roofline.efficiency({"fp32": 2e9, "int8": 4e9}, seconds=0.1, peak=peak)
    # ideal: 2e9 / 100e9 + 4e9 / 400e9 = 0.03 s against 0.1 s measured
    assert result["ideal_ms"] == pytest.approx(30.0)
    assert result["fraction_of_peak"] == pytest.approx(0.3)
    assert result["achieved_gops"] == pytest.approx(60.0) and result["operations"] == 6e9


def test_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(roofline, "PEAK_SHAPE", (64, 128, 128))  # small: a test, not a benchmark
    first = roofline.matmul_peak(threads=1, cache_folder=tmp_path)
    assert first["cached"] is False and first["fp32_gops"] > 0 and first["int8_gops"] > 0
    again = roofline.matmul_peak(threads=1, cache_folder=tmp_path)
    assert again["cached"] is True and again["fp32_gops"] == first["fp32_gops"]
    cache = json.loads((tmp_path / "machine" / "matmul-peak.json").read_text())["payload"]
    assert len(cache) == 1 and "threads=1" in next(iter(cache))


def _tamper(path):
    stored = json.loads(path.read_text())
    for entry in stored["payload"].values():
        entry["fp32_gops"] = 7.0  # valid JSON, a lie
    path.write_text(json.dumps(stored))
    return "do not match their checksum"


def _break(path):
    path.write_text("{broken")
    return "unreadable"


@pytest.mark.parametrize("damage", [_tamper, _break], ids=["tampered", "unreadable"])
def test_a_damaged_peak_cache_is_said_in_one_line_and_measured_again(damage, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(roofline, "PEAK_SHAPE", (64, 128, 128))
    first = roofline.matmul_peak(threads=1, cache_folder=tmp_path)
    reason = damage(tmp_path / "machine" / "matmul-peak.json")
    capsys.readouterr()
    again = roofline.matmul_peak(threads=1, cache_folder=tmp_path)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "machine peak cache" in lines[0] and reason in lines[0]
    assert "is corrupt" in lines[0] and "measuring again" in lines[0]
    assert again["cached"] is False and again["fp32_gops"] != 7.0 and again["fp32_gops"] > 0
    assert first["shape"] == again["shape"]
    assert roofline.matmul_peak(threads=1, cache_folder=tmp_path)["cached"] is True  # the new file is sound
