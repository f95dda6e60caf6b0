"""LiteRT (formerly TensorFlow Lite) `.tflite`, the format of Google's models and most Android apps.

The student is converted by Google's own converter, litert-torch (torch.export, then the
LiteRT converter), at one fixed input shape: batch 1, and for text `max_length` tokens (the
converter refuses a dynamic sequence length). Shorter texts are padded to that length and
their attention mask hides the padding, as an app feeding the model would do. The int8 form
is the converter's own dynamic-range recipe: int8 weights, one scale per output channel,
activations quantised at run time.

The file runs on the ai-edge-litert interpreter (its XNNPACK delegate on CPU), which
`edgekd.sessions.LiteRTSession` puts behind the `run(["logits"], feeds)` call of an
onnxruntime session, so the export checks and the bench treat it as every other artifact.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from edgekd.errors import UserError, first_line
from edgekd.progress import quiet_native_output
from edgekd.sessions import LITERT_INSTALL

TFLITE_FILE = "model.tflite"


class _Named(torch.nn.Module):
    """The classifier with keyword inputs, so the .tflite signature keeps their names."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, pixel_values=None):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                 "pixel_values": pixel_values}
        return self.model(**{name: value for name, value in given.items() if value is not None}).logits


def fixed_sample(inputs, *, sequence_length: int) -> dict[str, torch.Tensor]:
    """One row of every input at the shape the .tflite is converted for."""
    if inputs.kind == "pixels":
        feeds = inputs.random_feeds(shapes=[(1, 0)])[0]
    else:
        feeds = inputs.random_feeds(shapes=[(1, sequence_length)])[0]
    return {name: torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in inputs.names}


@contextlib.contextmanager
def _converter_quiet():
    """The converter prints its stages, warnings and bars to stdout, stderr and the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with quiet_native_output(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def export_tflite(model: torch.nn.Module, inputs, path: Path, *, precision: str, sequence_length: int) -> dict:
    """Convert the classifier to `path` at batch 1 (and `sequence_length` tokens); `precision`
    int8-dynamic applies the converter's dynamic-range int8 recipe. Returns the manifest's details."""
    try:
        with _converter_quiet():  # importing it starts TensorFlow Lite's native logging
            import litert_torch
            from litert_torch.generative.quantize import quant_recipes
    except ImportError as error:
        raise UserError(f"the litert targets need Google's litert-torch converter; install it with {LITERT_INSTALL}") \
            from error
    sample = fixed_sample(inputs, sequence_length=sequence_length)
    quantization = quant_recipes.full_dynamic_recipe() if precision == "int8-dynamic" else None
    try:
        with _converter_quiet(), torch.no_grad():
            converted = litert_torch.convert(_Named(model.eval().float()).eval(), sample_kwargs=sample,
                                             quant_config=quantization)
            converted.export(str(path))
    except Exception as error:  # an operator the converter does not lower, an unsupported model
        raise UserError(f"litert-torch could not convert {type(model).__name__}: {first_line(error)[:240]}; "
                        "export it to onnx or executorch instead") from error
    details = {"input_shapes": {name: list(value.shape) for name, value in sample.items()},
               "converter": f"litert-torch {_version('litert-torch')}"}
    if precision == "int8-dynamic":
        details["quantization"] = {"method": "litert-torch full_dynamic_recipe (dynamic-range int8)",
                                   "per_channel": True, "layers": "every weight the converter quantises",
                                   "activations": "quantised at run time"}
    return details


def _version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"
