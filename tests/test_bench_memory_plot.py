"""Peak resident memory measured in a child process, and report.png."""

import math

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

from edgekd.benchmarking.memory import measure_memory
from edgekd.benchmarking.plot import pareto_front, write_plot


def embedding_classifier(path, *, vocabulary: int, width: int):
    """input_ids -> Gather from a (vocabulary, width) table -> mean -> 3 logits."""
    table = np.random.default_rng(0).standard_normal((vocabulary, width)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["embedded"]),
             helper.make_node("ReduceMean", ["embedded", "axis"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "head"], ["logits"])]
    graph = helper.make_graph(
        nodes, "embedding", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 3])],
        initializer=[numpy_helper.from_array(table, "table"),
                     numpy_helper.from_array(np.array([1], np.int64), "axis"),
                     numpy_helper.from_array(np.ones((width, 3), np.float32), "head")])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_memory_of_a_bigger_model_is_bigger_by_its_weights(tmp_path):
    feeds = {"input_ids": np.arange(8, dtype=np.int64)[None]}
    small = embedding_classifier(tmp_path / "small.onnx", vocabulary=100, width=8)
    big = embedding_classifier(tmp_path / "big.onnx", vocabulary=20_000, width=1000)  # 80 MB fp32
    measured = {name: measure_memory(model_format="onnx", source=path, input_names=["input_ids"],
                                     feeds=feeds, threads=1)
                for name, path in (("small", small), ("big", big))}
    for result in measured.values():
        assert result["peak_rss_mb"] >= result["runtime_rss_mb"] > 10  # python + onnxruntime
    assert measured["big"]["model_rss_mb"] - measured["small"]["model_rss_mb"] > 70
    # the child imported onnxruntime only: its baseline is far below a torch process's
    assert measured["small"]["runtime_rss_mb"] < 200


def test_a_failing_probe_reports_an_error_instead_of_a_number(tmp_path):
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    result = measure_memory(model_format="onnx", source=tmp_path / "broken.onnx",
                            input_names=["input_ids"], feeds={"input_ids": np.zeros((1, 2), np.int64)},
                            threads=1)
    assert set(result) == {"error"} and "memory probe failed" in result["error"]


def test_pareto_front_by_hand():
    # (latency, accuracy): C is slower and worse than B; D is fastest; A is most accurate
    points = [(10.0, 0.97), (2.0, 0.95), (5.0, 0.90), (1.0, 0.80), (2.0, 0.93)]
    assert pareto_front(points) == [3, 1, 0]
    assert pareto_front([]) == []


def report_for_plot():
    rows = []
    for name, fmt, accuracy, p50, size in [("teacher", "pytorch", 0.966, 40.0, 90e6),
                                           ("student", "pytorch", 0.962, 12.0, 30e6),
                                           ("student/onnx-int8", "onnx", 0.960, 3.0, 8e6),
                                           ("student/no-labels", "onnx", math.nan, 2.0, 8e6)]:
        rows.append({"name": name, "format": fmt, "runtime": f"{fmt} fp32",
                     "quality": {"accuracy": accuracy}, "latency": {"p50_ms": p50}, "size_bytes": size})
    return {"rows": rows, "data": {"rows": 500}, "machine": {"cpu": "test CPU"},
            "settings": {"sequence_length": 128}}


def test_plot_is_written_as_a_png(tmp_path):
    write_plot(report_for_plot(), tmp_path / "report.png")
    data = (tmp_path / "report.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert [p.name for p in tmp_path.iterdir()] == ["report.png"]  # no temporary left behind
