"""ONNX fp32 -> int8 with onnxruntime.quantization."""

from __future__ import annotations

from pathlib import Path

from edgekd.targets import Quantization


def quantize_dynamic(source: Path, destination: Path, options: Quantization) -> None:
    """Dynamic int8: weights quantised ahead of time, activations scaled per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic as ort_quantize_dynamic

    weight_type = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[options.weight_type]
    ort_quantize_dynamic(str(source), str(destination), weight_type=weight_type,
                         per_channel=options.per_channel, reduce_range=options.reduce_range,
                         op_types_to_quantize=list(options.op_types))
