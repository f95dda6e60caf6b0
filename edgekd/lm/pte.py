"""Causal LMs as ExecuTorch programs: the key/value cache inside the .pte, one token per call.

The student is wrapped by transformers' `TorchExportableModuleForDecoderOnlyLM` with a static
cache of `max_length` positions, exported with `torch.export` and lowered to XNNPACK. The
program takes one token id and its position (`input_ids` (1, 1), `cache_position` (1,)) and
returns that position's logits; the cache lives in the program's own buffers, so an app only
counts positions. A new sequence starts again at position 0: the cache's later entries are
masked by position, never read.

`8da4w` is ExecuTorch's recipe for decoders on phones (torchao): Linear weights int4 in
symmetric groups of 32 along the input, activations int8 per token at run time.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from edgekd.errors import UserError, first_line

PTE_LM_PRECISIONS = ("fp32", "8da4w")
GROUP_SIZE = 32  # int4 weights share one scale per this many inputs
SCHEME_8DA4W = {"weights": f"int4 per group of {GROUP_SIZE} inputs, symmetric (torchao)",
                "activations": "int8 per token at run time", "lowered_to": "XNNPACK"}


def prepared_model(model: torch.nn.Module, *, precision: str, max_length: int) -> torch.nn.Module:
    """A copy of `model` as the program will hold it: a static cache of `max_length` positions
    and, for 8da4w, torchao's quantised Linear layers (PyTorch runs it too, for the greedy check)."""
    from transformers import GenerationConfig

    if precision not in PTE_LM_PRECISIONS:
        raise UserError(f"a causal LM's .pte is {' or '.join(PTE_LM_PRECISIONS)}, not {precision}")
    model = copy.deepcopy(model).float().eval()  # quantisation and the cache settings change it in place
    model.generation_config = GenerationConfig(use_cache=True, cache_implementation="static", max_length=max_length,
                                               cache_config={"batch_size": 1, "max_cache_len": max_length})
    if precision == "8da4w":
        _quantize_8da4w(model)
    return model


def export_lm_pte(model: torch.nn.Module, path: Path, *, max_length: int) -> dict:
    """Write a `prepared_model` as a .pte with a static cache of `max_length` positions; the
    manifest's delegation entry (how many graph nodes XNNPACK took)."""
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    from edgekd.exporting.mobile import lower_program
    from edgekd.progress import quiet_native_output

    try:
        with torch.no_grad(), quiet_native_output():
            wrapper = TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=max_length)
            program = wrapper.export(input_ids=torch.zeros((1, 1), dtype=torch.long),
                                     cache_position=torch.zeros(1, dtype=torch.long))
            return lower_program(program, path, backend="xnnpack", what=type(model).__name__)
    except UserError:
        raise
    except Exception as error:  # torch.export and ExecuTorch errors are long; the first line names the cause
        raise UserError(f"ExecuTorch cannot export {type(model).__name__} with a static cache: "
                        f"{first_line(error)[:200]}; export it to onnx-fp32 instead") from error


def _quantize_8da4w(model: torch.nn.Module) -> None:
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    odd = [name for name, module in model.named_modules()
           if isinstance(module, torch.nn.Linear) and module.in_features % GROUP_SIZE]
    if odd:
        raise UserError(f"8da4w groups {GROUP_SIZE} inputs per scale, but {odd[0]} takes "
                        f"{dict(model.named_modules())[odd[0]].in_features}; export to executorch (fp32) instead")
    quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                           weight_granularity=PerGroup(GROUP_SIZE)))
