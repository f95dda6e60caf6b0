"""ONNX fp32 -> int8 with onnxruntime.quantization (dynamic, or static QDQ with calibration)
and -> 4-bit weight-only MatMulNBits.

Calibration is kept apart from quantisation: `calibrate` runs the training samples once
and writes the activation ranges to a cache file, and every `quantize_static` call after
that (the accuracy-aware search makes many) reuses it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterable

import numpy as np

from edgekd.targets import Quantization

CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
INTEGER_TYPES = {"int8": "QInt8", "uint8": "QUInt8"}
# The attention mask turns into large negative numbers that are added to the attention
# scores; everything from the mask input up to the Softmax that consumes them is the
# mask path. Quantising it, or calibrating on it, would stretch a range to -3.4e38.
MASK_INPUT = "attention_mask"


def quantize_dynamic(source: Path, destination: Path, options: Quantization, *,
                     nodes_kept_float: Iterable[str] = ()) -> None:
    """Dynamic int8: weights quantised ahead of time, activations scaled per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic as ort_quantize_dynamic

    ort_quantize_dynamic(str(source), str(destination),
                         weight_type=getattr(QuantType, INTEGER_TYPES[options.weight_type]),
                         per_channel=options.per_channel, reduce_range=options.reduce_range,
                         op_types_to_quantize=list(options.op_types),
                         nodes_to_exclude=_excluded(source, nodes_kept_float))


def quantize_int4(source: Path, destination: Path) -> None:
    """4-bit weight-only MatMulNBits, symmetric blocks of 32; accuracy level 4 lets the CPU
    kernel multiply in int8, the fast path on x86 and ARM. Files over protobuf's limit keep
    their weights beside them."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), bits=4, block_size=32,
                                     is_symmetric=True, accuracy_level=4)
    quantizer.process()
    large = quantizer.model.model.ByteSize() >= 1_900_000_000
    quantizer.model.save_model_to_file(str(destination), use_external_data_format=large)


class _Feeds:
    """onnxruntime's CalibrationDataReader protocol over a list of feed dicts."""

    def __init__(self, feeds_list: list[dict[str, np.ndarray]]) -> None:
        self._iterator = iter(feeds_list)

    def get_next(self):
        return next(self._iterator, None)


def calibrate(source: Path, cache: Path, options: Quantization,
              feeds_list: list[dict[str, np.ndarray]]) -> None:
    """Run the calibration batches through `source` and store activation ranges in `cache`.

    Only tensors around the operator types being quantised are collected (MatMul/Gemm by
    default), so the attention-mask path never reaches the entropy or percentile histograms.
    """
    from onnxruntime.quantization import CalibrationMethod, quantize_static as ort_quantize_static

    with _scratch_output(cache) as scratch:
        ort_quantize_static(str(source), str(scratch), _Feeds(feeds_list),
                            calibrate_method=getattr(CalibrationMethod,
                                                     CALIBRATION_METHODS[options.calibration_method]),
                            op_types_to_quantize=list(options.op_types),
                            nodes_to_exclude=sorted(mask_path_nodes(source)),
                            calibration_cache_path=str(cache),
                            extra_options=_calibration_options(options))


def quantize_static(source: Path, destination: Path, options: Quantization, *, cache: Path,
                    nodes_kept_float: Iterable[str] = ()) -> None:
    """QDQ static int8 from the ranges `calibrate` stored in `cache`."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static as ort_quantize_static)

    ort_quantize_static(str(source), str(destination), None, quant_format=QuantFormat.QDQ,
                        calibrate_method=getattr(CalibrationMethod,
                                                 CALIBRATION_METHODS[options.calibration_method]),
                        weight_type=getattr(QuantType, INTEGER_TYPES[options.weight_type]),
                        activation_type=getattr(QuantType, INTEGER_TYPES[options.activation_type]),
                        per_channel=options.per_channel, reduce_range=options.reduce_range,
                        op_types_to_quantize=list(options.op_types),
                        nodes_to_exclude=_excluded(source, nodes_kept_float),
                        calibration_cache_path=str(cache),
                        extra_options=_calibration_options(options))


def _excluded(source: Path, nodes_kept_float: Iterable[str]) -> list[str]:
    """Node names the quantiser must leave alone: those asked for and the mask path.

    Dynamic quantisation first rewrites each Gemm as MatMul + Add named `<gemm>_MatMul`,
    so a Gemm kept in float is excluded under both names.
    """
    names = set(nodes_kept_float) | mask_path_nodes(source)
    return sorted(names | {f"{name}_MatMul" for name in names})


def _calibration_options(options: Quantization) -> dict:
    # Symmetric int8 activations need a zero point of 0; uint8 ranges may be asymmetric.
    return {"CalibPercentile": options.percentile,
            "ActivationSymmetric": options.activation_type == "int8",
            "WeightSymmetric": options.weight_type == "int8"}


class _scratch_output:
    """A throw-away output path beside `cache` for the calibration pass."""

    def __init__(self, cache: Path) -> None:
        self.path = Path(cache).with_suffix(".calibration-scratch.onnx")

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def mask_path_nodes(model_path: Path) -> set[str]:
    """Names of the nodes between the attention-mask input and the Softmax nodes it feeds."""
    path = Path(model_path)
    return set(_mask_path_nodes(str(path.resolve()), path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _mask_path_nodes(path: str, modified: int) -> frozenset[str]:
    # Cached by file and modification time: the accuracy search quantises the same
    # source file dozens of times, and reading a large graph costs seconds each time.
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    if MASK_INPUT not in {i.name for i in graph.input}:
        return frozenset()
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    reached, frontier = set(), [MASK_INPUT]
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.name in reached:
                continue
            reached.add(node.name)
            if node.op_type != "Softmax":  # its output, probabilities, is finite again
                frontier.extend(node.output)
    return frozenset(reached)


def quantizable_nodes(model_path: Path, options: Quantization, *, weights_only: bool) -> list[str]:
    """Nodes the quantiser would turn to int8: operator types asked for, off the mask path,
    reading a weight; with `weights_only` False (static int8) also the attention MatMuls
    of two activations, which dynamic int8 leaves in float."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    constants = {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    excluded = mask_path_nodes(model_path) | set(options.nodes_kept_float)
    chosen = []
    for node in graph.node:
        if node.op_type not in options.op_types or node.name in excluded:
            continue
        if node.op_type == "Gather":  # only tables (embeddings); not shape or index gathers
            if node.input[0] in initializers:
                chosen.append(node.name)
        elif any(name in initializers or name in constants for name in node.input):
            chosen.append(node.name)
        elif node.op_type == "MatMul" and not weights_only:
            chosen.append(node.name)
    return chosen


# ------------------------------------------------------------------------------ precisions

def _copy(source: Path, destination: Path) -> None:
    import shutil

    shutil.copyfile(source, destination)


def _fp16(source: Path, destination: Path) -> None:
    from edgekd.exporting.onnx import convert_fp16

    convert_fp16(source, destination)


# The one table from a precision to the pass that makes it from the fp32 ONNX model. int8 is
# not in it: each contract brings its own (a classifier's searched against its accuracy
# budget, a decoder's against its perplexity budget, the sizing timer's plain dynamic one).
PRECISION_PASSES = {"fp32": _copy, "fp16": _fp16, "int4": quantize_int4}


def build_precision(precision: str, source: Path, destination: Path, *, int8):
    """The model of `precision` written to `destination` from the fp32 `source`: by the table,
    or by `int8(source, destination)`, whose result is returned (None for the others)."""
    if precision in PRECISION_PASSES:
        PRECISION_PASSES[precision](source, destination)
        return None
    return int8(source, destination)
