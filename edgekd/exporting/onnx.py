"""PyTorch classifier -> ONNX with dynamic batch (and, for text, sequence) axes; fp16 conversion.

The TorchScript exporter is used on the eager attention path by default: its graph is the
one ONNX Runtime's transformer optimiser recognises (attention, LayerNorm and GELU
fusions); sdpa and dynamo exports lose the attention fusion. The dynamo exporter is
selectable (`exporter: dynamo` in a target) for models the TorchScript tracer cannot handle.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgekd.errors import UserError, first_line
from edgekd.models import model_inputs


class LogitsOnly(torch.nn.Module):
    """Wraps a classifier so the graph has exactly the named inputs and one `logits` output."""

    def __init__(self, model: torch.nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.model, self.input_names = model, input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs))).logits


def input_names_of(model: torch.nn.Module, tokenizer) -> list[str]:
    """Inputs the exported graph takes: those the tokenizer produces and the model accepts."""
    sample = tokenizer(["a b"], return_tensors="pt")
    return list(model_inputs(model, dict(sample)))


def export_onnx(model: torch.nn.Module, tokenizer, path: Path, *, opset: int,
                exporter: str = "torchscript") -> list[str]:
    """Write a text classifier as ONNX to `path`; returns the graph's input names."""
    from edgekd.exporting.inputs import TokenInputs

    return export_graph(model, TokenInputs(tokenizer, input_names_of(model, tokenizer)), path, opset=opset,
                        exporter=exporter)


def export_graph(model: torch.nn.Module, inputs, path: Path, *, opset: int, exporter: str = "torchscript") -> list[str]:
    """Write a classifier taking `inputs` (edgekd/exporting/inputs.py) as ONNX to `path`, every
    input's batch axis (and a text's sequence axis) dynamic; returns the graph's input names."""
    model = model.eval().float()
    input_names = list(inputs.names)
    args = inputs.trace_sample()
    wrapped = LogitsOnly(model, input_names)
    try:
        with torch.no_grad():
            if exporter == "dynamo":
                _export_dynamo(wrapped, args, inputs, path, opset=opset)
            else:
                dynamic = {0: "batch", 1: "sequence"} if inputs.kind == "tokens" else {0: "batch"}
                axes = {name: dict(dynamic) for name in input_names}
                axes["logits"] = {0: "batch"}
                torch.onnx.export(wrapped, args, str(path), dynamo=False,
                                  input_names=input_names, output_names=["logits"],
                                  dynamic_axes=axes, opset_version=opset, do_constant_folding=True)
    except UserError:
        raise
    except Exception as error:  # tracer and exporter raise many types with long texts
        raise UserError(f"the {exporter} exporter cannot convert {type(model).__name__}: "
                        f"{first_line(error)[:200]}; try another exporter "
                        "(--exporter dynamo, or --exporter optimum in the optimum environment)") from error
    return input_names


def _export_dynamo(wrapped: torch.nn.Module, args: tuple, inputs, path: Path, *, opset: int) -> None:
    dims = inputs.dynamic_dims(max_batch=1024, max_sequence=8192)
    # One entry: the wrapper takes its inputs as *args, a single tuple to torch.export.
    shapes = (tuple(dict(dims) for _ in inputs.names),)
    program = torch.onnx.export(wrapped, args, dynamo=True, input_names=list(inputs.names),
                                output_names=["logits"], dynamic_shapes=shapes,
                                opset_version=opset, optimize=True)
    program.save(str(path))


def check_onnx_file(path: Path) -> None:
    """A clear error for a corrupt or truncated ONNX file, before any runtime sees it."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as error:  # onnx raises ValidationError or protobuf DecodeError
        raise UserError(f"{path} is not a valid ONNX model ({first_line(error)[:160]}); "
                        "the file is corrupt or truncated, export it again") from error


def opset_of(path: Path) -> int:
    """The default-domain opset a file was written with (dynamo raises 17 to 18)."""
    import onnx

    imports = onnx.load(str(path), load_external_data=False).opset_import
    return next(i.version for i in imports if i.domain in ("", "ai.onnx"))


def convert_fp16(source: Path, destination: Path) -> None:
    """fp16 weights and compute; inputs and the logits output stay as they were (int64, fp32)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    # keep_io_types: callers feed the same arrays and get fp32 logits from every target.
    converted = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(destination))
