"""Mobile formats: ONNX Runtime Mobile's `.ort` and ExecuTorch's `.pte`.

`.ort` is the ONNX model optimised at the target's level and serialised as flatbuffers,
plus `required_operators.config`: the operator list a reduced ONNX Runtime Mobile build
for Android/iOS is compiled with (`build.sh --include_ops_by_config`).

`.pte` is the PyTorch student captured with torch.export (dynamic batch and sequence),
lowered with the XNNPACK partitioner so the whole graph runs on XNNPACK kernels, and
serialised for the ExecuTorch runtime.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgekd.errors import UserError
from edgekd.export.onnx import LogitsOnly, trace_sample
from edgekd.progress import quiet_native_output
from edgekd.sessions import OPTIMIZATION_LEVELS

ORT_FILE = "model.ort"
REQUIRED_OPERATORS_FILE = "required_operators.config"
PTE_FILE = "model.pte"


def convert_to_ort(source: Path, folder: Path, *, optimization_level: str) -> tuple[Path, Path]:
    """Write `folder/model.ort` and `folder/required_operators.config` from an ONNX file."""
    import onnxruntime as ort
    from onnxruntime.tools.ort_format_model import create_config_from_models

    ort_path = Path(folder) / ORT_FILE
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                               OPTIMIZATION_LEVELS[optimization_level])
    options.optimized_model_filepath = str(ort_path)
    options.add_session_config_entry("session.save_model_format", "ORT")
    # NCHWc layouts are x86-only: leaving that transformer out keeps the file portable to ARM.
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=["NchwcTransformer"])
    config_path = Path(folder) / REQUIRED_OPERATORS_FILE
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


def export_pte(model: torch.nn.Module, tokenizer, input_names: list[str], path: Path, *,
               backend: str, max_sequence: int) -> dict:
    """Capture the student with torch.export and write an ExecuTorch program to `path`;
    returns how much of the graph the backend took (see `_delegation`)."""
    try:
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as error:
        raise UserError("the executorch target needs ExecuTorch; install it with "
                        "pip install -c constraints.txt 'edgekd[executorch]'") from error
    model = model.eval().float()
    batch = torch.export.Dim("batch", min=1, max=64)
    sequence = torch.export.Dim("sequence", min=2, max=max_sequence)
    shapes = tuple({0: batch, 1: sequence} for _ in input_names)
    try:
        with torch.no_grad(), quiet_native_output():
            program = torch.export.export(LogitsOnly(model, input_names),
                                          trace_sample(tokenizer, input_names),
                                          dynamic_shapes=(shapes,), strict=False)
            lowered = to_edge_transform_and_lower(program, partitioner=_partitioners(backend))
            Path(path).write_bytes(lowered.to_executorch().buffer)
    except UserError:
        raise
    except Exception as error:  # torch.export / ExecuTorch raise many types with long texts
        raise UserError(f"ExecuTorch cannot export {type(model).__name__}: "
                        f"{str(error).strip().splitlines()[0][:200]}; use an ONNX target "
                        "for this architecture") from error
    delegation = _delegation(lowered)
    if backend != "portable" and delegation["delegate_calls"] == 0:
        raise UserError(f"ExecuTorch's {backend} backend took no part of "
                        f"{type(model).__name__}; use an ONNX target for this architecture")
    return delegation


def _partitioners(backend: str) -> list:
    if backend == "portable":  # ExecuTorch's own portable kernels, no delegate
        return []
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return [XnnpackPartitioner()]



def _delegation(lowered) -> dict:
    """How much of the program the backend took: delegate calls and the operators left out."""
    calls, left = 0, set()
    for node in lowered.exported_program().graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if name == "executorch_call_delegate":
            calls += 1
        elif name.startswith(("aten.", "dim_order_ops.")):
            left.add(name)
    return {"delegate_calls": calls, "operators_outside_delegate": sorted(left)}
