"""Mobile formats: ONNX Runtime Mobile's `.ort` and ExecuTorch's `.pte`.

`.ort` is the ONNX model optimised at the target's level and serialised as flatbuffers,
plus `required_operators.config`: the operator list a reduced ONNX Runtime Mobile build
for Android/iOS is compiled with (`build.sh --include_ops_by_config`).

`.pte` is the PyTorch student captured with torch.export (dynamic batch and sequence),
lowered with the XNNPACK partitioner so the whole graph runs on XNNPACK kernels, and
serialised for the ExecuTorch runtime. Its int8 form is ExecuTorch's own: PT2E
quantisation for XNNPACK (int8 weights per output channel, activations quantised
dynamically at run time; Linear and convolution layers), embedding tables as int8 rows for
ExecuTorch's quantised lookup kernel, then the same lowering.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgekd.errors import UserError, first_line
from edgekd.exporting.onnx import LogitsOnly
from edgekd.progress import quiet_native_output
from edgekd.sessions import OPTIMIZATION_LEVELS

ORT_FILE = "model.ort"
REQUIRED_OPERATORS_FILE = "required_operators.config"
PTE_FILE = "model.pte"


def convert_to_ort(source: Path, folder: Path, *, optimization_level: str, name: str = ORT_FILE,
                   config_name: str = REQUIRED_OPERATORS_FILE, custom_ops: bool = False) -> tuple[Path, Path]:
    """Write `folder/model.ort` and `folder/required_operators.config` from an ONNX file
    (`custom_ops`: with ONNX Runtime Extensions' operators registered)."""
    import onnxruntime as ort
    from onnxruntime.tools.ort_format_model import create_config_from_models

    from edgekd.sessions import register_extensions

    ort_path = Path(folder) / name
    options = ort.SessionOptions()
    if custom_ops:
        register_extensions(options)
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                               OPTIMIZATION_LEVELS[optimization_level])
    options.optimized_model_filepath = str(ort_path)
    options.add_session_config_entry("session.save_model_format", "ORT")
    # NCHWc layouts are x86-only: leaving that transformer out keeps the file portable to ARM.
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=["NchwcTransformer"])
    config_path = Path(folder) / config_name
    create_config_from_models([ort_path], config_path, enable_type_reduction=False)
    return ort_path, config_path


def required_operators(config_path: Path) -> dict[str, list[str]]:
    """The `domain;opset;Op,Op` lines of a required-operators config as {domain@opset: ops}."""
    operators = {}
    for line in Path(config_path).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            domain, opset, names = line.split(";")
            operators[f"{domain}@{opset}"] = sorted(names.split(","))
    return operators


def export_pte(model: torch.nn.Module, inputs, path: Path, *,
               backend: str, max_sequence: int, precision: str = "fp32",
               calibration: list[dict] | None = None, per_channel: bool = True) -> dict:
    """Capture the student with torch.export and write an ExecuTorch program to `path`;
    returns how much of the graph the backend took (see `_delegation`). `precision`
    int8-dynamic quantises it first (`_quantize_pt2e`), observing `calibration` feeds;
    int8-static calibrates activation ranges on them."""
    try:
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as error:
        raise UserError("the executorch target needs ExecuTorch; install it with "
                        "pip install -c constraints.txt 'edgekd[executorch]'") from error
    model = model.eval().float()
    input_names = list(inputs.names)
    dims = inputs.dynamic_dims(max_batch=64, max_sequence=max_sequence)
    shapes = tuple(dict(dims) for _ in input_names)
    sample = inputs.trace_sample()
    try:
        with torch.no_grad(), quiet_native_output():
            if precision != "fp32" and backend != "xnnpack":
                raise UserError(f"int8 .pte files are quantised for XNNPACK, not {backend}; "
                                "set runtime.executorch_backend: xnnpack")
            captured = int8_embeddings(model) if precision == "int8-dynamic" else model
            program = torch.export.export(LogitsOnly(captured, input_names), sample,
                                          dynamic_shapes=(shapes,), strict=False)
            if precision == "int8-dynamic":
                quantized = _quantize_pt2e(program, [sample, *_samples(calibration, input_names)],
                                           per_channel=per_channel)
                program = torch.export.export(quantized, sample, dynamic_shapes=shapes, strict=False)
            elif precision == "int8-static":
                if not calibration:
                    raise UserError("static int8 needs calibration batches; pass --data")
                quantized = _quantize_pt2e(program, _samples(calibration, input_names), per_channel=per_channel,
                                           dynamic=False)
                program = torch.export.export(quantized, sample, dynamic_shapes=shapes, strict=False)
            delegation = lower_program(program, path, backend=backend, what=type(model).__name__)
    except UserError:
        raise
    except Exception as error:  # torch.export / ExecuTorch raise many types with long texts
        raise UserError(f"ExecuTorch cannot export {type(model).__name__}: "
                        f"{first_line(error)[:200]}; use an ONNX target "
                        "for this architecture") from error
    if inputs.kind == "pixels":
        delegation["max_batch"] = largest_batch(path, sample[0])
    return delegation


def lower_program(program, path: Path, *, backend: str, what: str) -> dict:
    """Lower an exported program to `backend`, write the .pte to `path`; how much of the graph
    the backend took (`_delegation`). A backend that took nothing is an error."""
    from executorch.exir import to_edge_transform_and_lower

    lowered = to_edge_transform_and_lower(program, partitioner=_partitioners(backend))
    Path(path).write_bytes(lowered.to_executorch().buffer)
    delegation = _delegation(lowered)
    if backend != "portable" and delegation["delegate_calls"] == 0:
        raise UserError(f"ExecuTorch's {backend} backend took no part of {what}; use an ONNX target "
                        "for this architecture")
    return delegation


def largest_batch(path: Path, sample: torch.Tensor, *, limit: int = 64) -> int:
    """The most images one call of the program takes. XNNPACK plans an image program's
    buffers for fewer rows than torch.export's batch bound allows (15 for the convolutional
    networks tried, whatever the bound), so the bound is found by running it."""
    from edgekd.progress import quiet_native_output
    from edgekd.sessions import load_pte_method

    method = load_pte_method(path)
    works = lambda rows: _runs(method, torch.zeros((rows, *sample.shape[1:])))  # noqa: E731
    low, high = 1, limit
    if works(high):
        return high
    with quiet_native_output():  # the runtime logs each refused resize
        while high - low > 1:  # works(low), not works(high)
            middle = (low + high) // 2
            low, high = (middle, high) if works(middle) else (low, middle)
    return low


def _runs(method, pixels: torch.Tensor) -> bool:
    from edgekd.progress import quiet_native_output

    try:
        with quiet_native_output():
            method.execute([pixels])
        return True
    except RuntimeError:
        return False


class Int8Embedding(torch.nn.Module):
    """An embedding table stored as int8 rows with one scale each, looked up by ExecuTorch's
    `quantized_decomposed::embedding_byte` kernel. XNNPACK takes no embedding lookups and
    PT2E leaves them float; in a small student the word table is most of the file."""

    def __init__(self, embedding: torch.nn.Embedding) -> None:
        super().__init__()
        weight = embedding.weight.detach().float()
        scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        self.register_buffer("weight", torch.round(weight / scales[:, None]).clamp(-128, 127).to(torch.int8))
        self.register_buffer("scales", scales)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized_decomposed.embedding_byte.dtype(
            self.weight, self.scales, None, -128, 127, indices, dtype=torch.float32)


def int8_embeddings(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` with every nn.Embedding as an `Int8Embedding` (as onnx-int8
    quantises Gather); the model given stays float, the reference of every check."""
    import copy

    import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401 - defines embedding_byte
    import executorch.kernels.quantized  # noqa: F401 - its out-variant for the program

    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Embedding):
                setattr(parent, name, Int8Embedding(child))
    return model


def _samples(feeds_list: list[dict] | None, input_names: list[str]) -> list[tuple]:
    return [tuple(torch.from_numpy(feeds[name]) for name in input_names) for feeds in feeds_list or ()]


def _quantize_pt2e(program, samples: list[tuple], *, per_channel: bool, dynamic: bool = True) -> torch.fx.GraphModule:
    """ExecuTorch's int8 for XNNPACK: Linear weights int8 (per output channel), activations
    quantised at run time from each call's own range. The samples only run the observers
    once (dynamic quantisation needs no ranges); several shapes check the graph on them.
    With `dynamic` False (image classifiers: XNNPACK's dynamic int8 takes no depthwise
    convolutions of a dynamic batch), weights and activations are int8 with ranges
    observed on `samples`, the calibration batches, and every operator XNNPACK quantises is."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    class LinearOnlyQuantizer(XNNPACKQuantizer):
        def transform_for_annotation(self, model):
            # XNNPACKQuantizer's own pass turns every scalar of an add or mul into a float
            # tensor, so that static int8 can observe them. It does so on integer paths too:
            # transformers builds its attention mask as arange(length) + offset, and the
            # float index that pass makes fails the first call ("tensors used as indices
            # must be long, int, byte or bool tensors"). Dynamic int8 quantises only Linear and
            # convolution layers, whose inputs are tensors: no scalar needs a tensor here.
            return model

    config = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=dynamic)
    quantizer = LinearOnlyQuantizer() if dynamic else XNNPACKQuantizer()
    prepared = prepare_pt2e(program.module(), quantizer.set_global(config))
    for sample in samples:
        prepared(*sample)
    return convert_pt2e(prepared)


def _partitioners(backend: str) -> list:
    if backend == "portable":  # ExecuTorch's own portable kernels, no delegate
        return []
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return [XnnpackPartitioner()]



def _delegation(lowered) -> dict:
    """How much of the program the backend took: delegate calls, the operator nodes inside
    them, and the operators left to ExecuTorch's portable kernels."""
    program = lowered.exported_program()
    calls, left, outside = 0, set(), 0
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if name == "executorch_call_delegate":
            calls += 1
        elif name.startswith(("aten.", "dim_order_ops.", "quantized_decomposed.")):
            left.add(name)
            outside += 1
    inside = sum(sum(1 for node in module.original_module.graph.nodes if node.op == "call_function")
                 for module in program.graph_module.children() if hasattr(module, "original_module"))
    return {"delegate_calls": calls, "nodes_delegated": inside, "nodes_outside_delegate": outside,
            "operators_outside_delegate": sorted(left)}
