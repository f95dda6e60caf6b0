"""Dropout masks for CPU training, drawn four to a random 64-bit word.

PyTorch draws a CPU dropout mask one Bernoulli sample at a time from its serial
generator, except on Intel processors where it hands the job to MKL. On every other
CPU (AMD's, ARM's) the masks take about a fifth of a small encoder's training step,
most of it for the attention probabilities. Here each 64-bit word from the same
generator gives four 16-bit uniforms, and an element is kept when its uniform clears
the threshold for `p`; the comparison and the scaling run on all cores. That is a
quarter of the generator calls, and a mask costs about a third of PyTorch's.

It is dropout as defined: each element is zeroed independently with probability `p`
(rounded to a multiple of 1/65536, at most 7.6e-6 away) and the kept ones are scaled so
the expectation is exactly the input's. The masks come from torch's default CPU
generator, so `torch.manual_seed` makes them reproducible and checkpoints that save
its state resume them exactly.

`CpuDropout` is a torch function mode: inside it every `torch.nn.functional.dropout`
on a CPU tensor in training uses these masks, whatever model calls it (`nn.Dropout`
modules and the functional dropout inside attention alike). Other dropout variants,
inference and other devices pass through untouched. The training loops enter it only
where PyTorch's own masks are serial (`masks_are_serial`).
"""

from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

LEVELS = 1 << 16  # 16-bit uniforms


def dropout(x: torch.Tensor, p: float, *, inplace: bool = False) -> torch.Tensor:
    """Zero each element of `x` with probability `p` (to 1/65536) and scale the rest by
    the exact inverse of the keep probability."""
    dropped_levels = round(p * LEVELS)
    if dropped_levels == 0:
        return x
    if dropped_levels == LEVELS:
        return x.zero_() if inplace else torch.zeros_like(x)
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)
    uniforms = words.view(torch.int16)[: x.numel()].view(x.shape)  # each in [-32768, 32767]
    keep = uniforms >= dropped_levels - LEVELS // 2  # P(drop) = dropped_levels / 65536
    mask = keep.to(x.dtype).mul_(LEVELS / (LEVELS - dropped_levels))
    return x.mul_(mask) if inplace else x * mask


class CpuDropout(TorchFunctionMode):
    """Inside this mode, training-time `F.dropout` on CPU tensors draws its masks with
    `dropout` above; everything else runs as it would without the mode."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.dropout:
            x, p, training, inplace = _dropout_arguments(*args, **kwargs)
            if training and x.device.type == "cpu" and 0.0 <= p <= 1.0:
                return dropout(x, p, inplace=inplace)
        return func(*args, **kwargs)


def _dropout_arguments(input, p=0.5, training=True, inplace=False):
    return input, float(p), bool(training), bool(inplace)


@functools.cache
def masks_are_serial() -> bool:
    """Whether PyTorch draws CPU dropout masks one at a time here: without MKL, or on a
    processor that is not Intel's (PyTorch's own condition for MKL's parallel sampler)."""
    if not torch.backends.mkl.is_available():
        return True
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = platform.processor()
    return "GenuineIntel" not in cpuinfo


def training_masks(device: torch.device, *, compiled: bool = False) -> contextlib.AbstractContextManager:
    """The context a training forward runs in: `CpuDropout` where it is faster, else
    nothing (a compiled model draws its own masks)."""
    if device.type == "cpu" and not compiled and masks_are_serial():
        return CpuDropout()
    return contextlib.nullcontext()
