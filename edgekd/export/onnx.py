"""PyTorch classifier -> ONNX with dynamic batch and sequence axes.

The TorchScript exporter is used on the eager attention path: ONNX Runtime then
recognises and fuses the attention blocks (sdpa and dynamo exports lose that fusion).
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgekd.models import model_inputs


class _LogitsOnly(torch.nn.Module):
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


def export_onnx(model: torch.nn.Module, tokenizer, path: Path, *, opset: int) -> list[str]:
    """Write `model` as ONNX to `path`; returns the graph's input names."""
    model = model.eval().float()
    input_names = input_names_of(model, tokenizer)
    sample = tokenizer(["an example sentence to trace the graph", "a shorter one"],
                       padding=True, return_tensors="pt")
    args = tuple(sample[name] for name in input_names)
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    axes["logits"] = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(_LogitsOnly(model, input_names), args, str(path), dynamo=False,
                          input_names=input_names, output_names=["logits"],
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True)
    return input_names
