"""Efficiency against the machine's limit: matrix-multiply work per inference vs measured peak.

Only matrix multiplies and convolutions are counted (MatMul, Gemm, Conv and their int8
forms, or PyTorch's mm/bmm/addmm/convolution): they are nearly all the arithmetic of a
transformer encoder or a CNN, and a convolution is a matrix multiply over image patches,
the work the peak below is measured for. One multiply-add counts as 2 operations. In a
QDQ graph (static int8) an operator whose weights come from DequantizeLinear runs as int8:
ONNX Runtime fuses the pair.

The peak is a micro-benchmark of one large matrix multiply through onnxruntime, fp32 and
int8 (uint8 activations x int8 weights, what dynamic quantisation runs), at the thread
count the models were measured with. It runs once per machine, thread count and
onnxruntime version and is cached as JSON under the cache folder, with the checksum of its
entries (a damaged file is said so in one line and measured again).

The achieved fraction is ideal time / measured time, where the ideal time does the fp32
operations at the fp32 peak and the int8 operations at the int8 peak.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgekd.errors import exclusive
from edgekd.integrity import read_sealed_json, write_sealed_json

# Operator: (position of operand A, position of operand B, precision of the arithmetic).
MATMUL_OPERATORS = {
    "MatMul": (0, 1, "fp32"), "Gemm": (0, 1, "fp32"), "FusedMatMul": (0, 1, "fp32"),
    "MatMulInteger": (0, 1, "int8"), "MatMulIntegerToFloat": (0, 1, "int8"),
    "DynamicQuantizeMatMul": (0, 1, "int8"), "QLinearMatMul": (0, 3, "int8"),
    "QGemm": (0, 3, "int8"),
}
# Convolutions: (position of the input, position of the weights, precision); counted from the
# weights' shape and the output's, so the output's position (0) is not listed.
CONV_OPERATORS = {"Conv": (0, 1, "fp32"), "ConvInteger": (0, 1, "int8"), "QLinearConv": (0, 3, "int8")}
# Shape of the peak micro-benchmark: big enough to run at full speed out of cache.
PEAK_SHAPE = (256, 1024, 1024)  # (rows, inner, columns)
PEAK_REPEATS = 15


def matmul_operations(a_shape, b_shape, *, transpose_a: bool = False,
                      transpose_b: bool = False) -> int:
    """Operations (2 per multiply-add) of A @ B with numpy's broadcasting rules."""
    a_shape, b_shape = list(a_shape), list(b_shape)
    if len(a_shape) == 1:
        a_shape = [1] + a_shape
    if len(b_shape) == 1:
        b_shape = b_shape + [1]
    if transpose_a:
        a_shape[-2:] = a_shape[-2:][::-1]
    if transpose_b:
        b_shape[-2:] = b_shape[-2:][::-1]
    rows, inner, columns = a_shape[-2], a_shape[-1], b_shape[-1]
    batch = int(np.prod(np.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2])), dtype=np.int64))
    return 2 * batch * rows * inner * columns


def onnx_operations(model_path: Path, feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """Matrix-multiply operations of one inference on `feeds`, by precision: {fp32, int8}.

    Shapes inside the graph depend on the inputs (batch, sequence), so the graph is run
    once with onnxruntime, with every operand of a matrix multiply exposed as an output.
    """
    import onnx

    model = onnx.load(str(model_path))
    initializers = {t.name: list(t.dims) for t in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    matmuls = [node for node in model.graph.node if node.op_type in MATMUL_OPERATORS]
    convs = [node for node in model.graph.node if node.op_type in CONV_OPERATORS]
    wanted = [name for node in matmuls for name in _operands(node)] + \
             [name for node in convs for name in (node.input[CONV_OPERATORS[node.op_type][1]], node.output[0])]
    wanted = list(dict.fromkeys(name for name in wanted if name not in initializers))
    shapes = dict(initializers)
    shapes.update(_run_for_shapes(model, wanted, feeds))
    totals = {"fp32": 0, "int8": 0}
    for node in matmuls:
        a_name, b_name = _operands(node)
        attributes = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
        totals[_precision(node, MATMUL_OPERATORS, producers)] += matmul_operations(
            shapes[a_name], shapes[b_name], transpose_a=bool(attributes.get("transA", 0)),
            transpose_b=bool(attributes.get("transB", 0)))
    for node in convs:
        weights = shapes[node.input[CONV_OPERATORS[node.op_type][1]]]  # (out, in / groups, *kernel)
        totals[_precision(node, CONV_OPERATORS, producers)] += conv_operations(shapes[node.output[0]], weights)
    return totals


def conv_operations(output_shape, weight_shape) -> int:
    """Operations (2 per multiply-add) of a convolution: each output value sums
    in_channels / groups x kernel products."""
    return 2 * int(np.prod(output_shape, dtype=np.int64)) * int(np.prod(weight_shape[1:], dtype=np.int64))


def _precision(node, operators: dict, producers: dict) -> str:
    """The operator's own precision, or int8 where its weights come from DequantizeLinear (QDQ)."""
    precision = operators[node.op_type][2]
    weights = producers.get(node.input[operators[node.op_type][1]])
    return "int8" if precision == "fp32" and weights is not None and weights.op_type == "DequantizeLinear" else precision


def _operands(node) -> tuple[str, str]:
    a_position, b_position, _ = MATMUL_OPERATORS[node.op_type]
    return node.input[a_position], node.input[b_position]


def _run_for_shapes(model, names: list[str], feeds: dict[str, np.ndarray]) -> dict[str, list[int]]:
    import onnx
    import onnxruntime as ort

    if not names:
        return {}
    graph_outputs = {output.name for output in model.graph.output}
    for name in names:
        if name not in graph_outputs:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    # No fusions: the operands must stay the tensors the graph file names.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    inputs = {i.name: feeds[i.name] for i in session.get_inputs()}
    return {name: list(value.shape) for name, value in zip(names, session.run(names, inputs))}


def torch_operations(model, feeds: dict) -> dict[str, int]:
    """Matrix-multiply operations of one PyTorch forward pass, counted by FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(**{name: torch.as_tensor(value) for name, value in feeds.items()})
    return {"fp32": int(counter.get_total_flops()), "int8": 0}


def matmul_peak(*, threads: int, cache_folder: Path | None) -> dict:
    """The machine's fp32 and int8 matrix-multiply peak in Gop/s at `threads`, cached."""
    from edgekd.benchmarking.machine import machine_info

    machine = machine_info()
    key = f"{machine['cpu']}|{','.join(machine['flags'])}|threads={threads}|ort={machine['onnxruntime']}"
    if cache_folder is None:
        return {**_measured_peak(threads), "cached": False}
    cache_file = Path(cache_folder) / "machine" / "matmul-peak.json"
    with exclusive(cache_file, wait=True, what="machine peak cache"):  # one measurement at a time
        cached = read_sealed_json(cache_file, what="machine peak cache")
        if key in cached:
            return {**cached[key], "cached": True}
        peak = _measured_peak(threads)
        write_sealed_json(cache_file, {**cached, key: peak})
    return {**peak, "cached": False}


def _measured_peak(threads: int) -> dict:
    return {"fp32_gops": _measure_peak("fp32", threads=threads),
            "int8_gops": _measure_peak("int8", threads=threads),
            "shape": list(PEAK_SHAPE), "threads": threads, "measured_at": time.time()}


def _measure_peak(precision: str, *, threads: int) -> float:
    """Best Gop/s of one (rows x inner) @ (inner x columns) multiply through onnxruntime."""
    import onnxruntime as ort

    rows, inner, columns = PEAK_SHAPE
    model = peak_graph(precision)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    generator = np.random.default_rng(0)
    if precision == "int8":
        feeds = {"a": generator.integers(0, 256, size=(rows, inner), dtype=np.uint8)}
    else:
        feeds = {"a": generator.standard_normal((rows, inner), dtype=np.float32)}
    for _ in range(3):
        session.run(None, feeds)
    best = float("inf")
    for _ in range(PEAK_REPEATS):
        started = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - started)
    return matmul_operations((rows, inner), (inner, columns)) / best / 1e9


def peak_graph(precision: str):
    """One matrix multiply with constant weights: MatMul (fp32) or MatMulInteger (int8)."""
    from onnx import TensorProto, helper, numpy_helper

    rows, inner, columns = PEAK_SHAPE
    generator = np.random.default_rng(1)
    if precision == "int8":
        weights = generator.integers(-128, 128, size=(inner, columns), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["a", "b"], ["c"])
        a_type, c_type = TensorProto.UINT8, TensorProto.INT32
    else:
        weights = generator.standard_normal((inner, columns), dtype=np.float32)
        node = helper.make_node("MatMul", ["a", "b"], ["c"])
        a_type, c_type = TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], "peak", [helper.make_tensor_value_info("a", a_type, [rows, inner])],
                              [helper.make_tensor_value_info("c", c_type, [rows, columns])],
                              initializer=[numpy_helper.from_array(weights, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def efficiency(operations: dict[str, int], *, seconds: float, peak: dict) -> dict:
    """Achieved Gop/s and the fraction of the machine's peak an inference of `seconds` reaches."""
    ideal_seconds = (operations["fp32"] / (peak["fp32_gops"] * 1e9)
                     + operations["int8"] / (peak["int8_gops"] * 1e9))
    total = operations["fp32"] + operations["int8"]
    return {"operations": total, "fp32_operations": operations["fp32"],
            "int8_operations": operations["int8"], "achieved_gops": total / seconds / 1e9,
            "ideal_ms": ideal_seconds * 1000, "fraction_of_peak": ideal_seconds / seconds}
