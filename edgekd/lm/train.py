"""Causal-LM distillation: the stage that prepares the teacher, runs the loop, saves the student.

The teacher is used one of two ways: online (its full next-token distribution every
step) or, with `top_k > 0`, through the sparse top-k cache built once before the first
step (edgekd/lm/cache.py). With no teacher, or `hard_label_weight` 1, the loop is plain
language-model fine-tuning, the baseline that distillation is measured against. The loop
itself, with its checkpoints, resume and torchrun support, is edgekd/lm/loop.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from edgekd.cpu_memory import reuse_freed_memory
from edgekd.distill import checkpoint, distributed
from edgekd.distill.distributed import Ranks
from edgekd.errors import UserError, atomic_dir
from edgekd.lm.cache import TopKCache, open_or_build
from edgekd.lm.data import LMExamples
from edgekd.lm.loop import LMLoop, learning_rate, saved_state, step_loss  # noqa: F401 (public here too)
from edgekd.lm.losses import DIVERGENCES


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


@dataclass(frozen=True)
class LMDistillConfig:
    """How a causal-LM student learns from its teacher."""

    epochs: int = 3  # passes over the training texts
    max_steps: int = 0  # stop after this many optimiser steps (0 = --epochs decides)
    lr: float = 3e-4  # peak AdamW learning rate, reached after warm-up
    batch_size: int = 8  # texts per step
    max_length: int = 128  # tokens per text after truncation
    divergence: str = "forward_kl"  # forward_kl, reverse_kl or jsd
    beta: float = 0.5  # JSD weight on the teacher (0 -> forward KL, 1 -> reverse KL)
    temperature: float = 1.0  # softens both distributions inside the divergence (times T^2)
    hard_label_weight: float = 0.5  # weight of next-token cross-entropy; the rest goes to the divergence
    top_k: int = 64  # teacher tokens cached per position; 0 runs the teacher every step (dense)
    seed: int = 0  # shuffling and initialisation
    device: str = "auto"  # auto (cuda when available), cpu or cuda
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU, where fp32 is faster)
    warmup_fraction: float = 0.1  # share of steps with a linearly rising learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    max_grad_norm: float = 1.0  # gradients are clipped to this global norm
    train_embeddings: bool = True  # False freezes token embeddings and output head: the
    # student starts from the teacher's, and on a CPU this skips the largest weight gradient
    checkpoint_every: int = 50  # steps between checkpoints in OUT.checkpoints/ (0: none)

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        _check(self.max_steps >= 0, f"--max-steps must be >= 0, got {self.max_steps}")
        _check(0 < self.lr < 1, f"--lr must be in (0, 1), got {self.lr}")
        _check(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        _check(2 <= self.max_length <= 1_000_000, f"--max-length must be at least 2, got {self.max_length}")
        _check(self.divergence in DIVERGENCES,
               f"--divergence {self.divergence!r} is not one of {', '.join(DIVERGENCES)}")
        _check(0 <= self.beta <= 1, f"--beta must be in [0, 1], got {self.beta}")
        _check(self.temperature > 0, f"--temperature must be positive, got {self.temperature}")
        _check(0 <= self.hard_label_weight <= 1,
               f"--hard-label-weight must be in [0, 1], got {self.hard_label_weight}")
        _check(self.top_k >= 0, f"--top-k must be 0 (dense teacher) or positive, got {self.top_k}")
        _check(self.device in ("auto", "cpu", "cuda"), f"--device must be auto, cpu or cuda, got {self.device}")
        _check(0 <= self.warmup_fraction < 1, f"--warmup-fraction must be in [0, 1), got {self.warmup_fraction}")
        _check(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        _check(self.max_grad_norm > 0, f"--max-grad-norm must be > 0, got {self.max_grad_norm}")
        _check(self.checkpoint_every >= 0, f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")

    def total_steps(self, texts: int) -> int:
        """Optimiser steps of a run over `texts` training texts: --max-steps, else --epochs
        passes of ceil(texts / batch_size) batches."""
        return self.max_steps or self.epochs * math.ceil(texts / self.batch_size)


@dataclass(frozen=True)
class LMDistillResult:
    """What the loop wrote and how fast it went."""

    student_dir: Path | None  # None on the ranks other than 0 under torchrun (rank 0 writes)
    steps: int
    seconds: float  # the loop alone (teacher cache ready)
    teacher_seconds: float  # building or opening the top-k cache (0 when dense or no teacher)
    tokens_per_second: float  # predicted tokens per second of the loop
    final_loss: float
    cache_bytes_per_token: float = 0.0


def distill_lm(*, teacher: torch.nn.Module | None, student: torch.nn.Module, tokenizer,
               train: LMExamples, config: LMDistillConfig, out: Path, vocabulary: int,
               overwrite: bool = False, show_progress: bool = True,
               cache_root: Path | None = None, resume: bool = False) -> LMDistillResult:
    """Train `student` on `train` for `config.total_steps(len(train))` steps and save it to `out`.

    With `resume` the run continues from the checkpoint beside `out` (OUT.checkpoints/).
    Under torchrun every rank calls this: each trains on its rows of every batch, and
    rank 0 alone builds the teacher cache and writes checkpoints, metrics and the student.
    """
    reuse_freed_memory()  # each step's large gradient buffers reuse the last step's pages
    ranks, device, started = distributed.setup(config.device)
    try:
        return _distill_lm(teacher, student, tokenizer, train, config=config, out=Path(out),
                           vocabulary=vocabulary, overwrite=overwrite, resume=resume,
                           show_progress=show_progress and ranks.is_main, cache_root=cache_root,
                           ranks=ranks, device=device)
    finally:
        distributed.teardown(started)


def _distill_lm(teacher, student, tokenizer, train: LMExamples, *, config: LMDistillConfig, out: Path,
                vocabulary: int, overwrite: bool, resume: bool, show_progress: bool,
                cache_root: Path | None, ranks: Ranks, device: torch.device) -> LMDistillResult:
    torch.manual_seed(config.seed)
    checkpoints = checkpoint.checkpoint_dir(out)  # beside `out`: the atomic write of the student spares it
    saved = saved_state(checkpoints, config=config, texts=len(train), resume=resume, overwrite=overwrite,
                        ranks=ranks)
    uses_teacher = teacher is not None and config.hard_label_weight < 1
    output = atomic_dir(out, overwrite=overwrite) if ranks.is_main else contextlib.nullcontext(None)
    with output as staging:
        cache, teacher_seconds = _teacher_cache(teacher if uses_teacher else None, train, config=config,
                                                vocabulary=vocabulary, device=device, root=cache_root,
                                                ranks=ranks, show_progress=show_progress)
        loop = LMLoop(student, teacher=teacher if uses_teacher and cache is None else None, cache=cache,
                      train=train, config=config, vocabulary=vocabulary, device=device, ranks=ranks,
                      checkpoints=checkpoints, metrics_path=staging / "metrics.jsonl" if staging else None,
                      show_progress=show_progress)
        progress, seconds = loop.run(saved)
        student.cpu().eval()
        if staging is not None:
            _save_student(student, tokenizer, staging, config=config, teacher=teacher, seconds=seconds,
                          teacher_seconds=teacher_seconds)
    ranks.barrier()
    if ranks.is_main:
        checkpoint.remove(checkpoints)  # the run finished: its student replaces the checkpoints
    return LMDistillResult(student_dir=out if ranks.is_main else None, steps=progress.step, seconds=seconds,
                           teacher_seconds=teacher_seconds,
                           tokens_per_second=progress.tokens / max(seconds, 1e-9),
                           final_loss=progress.records[-1]["loss"] if progress.records else math.nan,
                           cache_bytes_per_token=cache.bytes_per_token if cache else 0.0)


def _teacher_cache(teacher: torch.nn.Module | None, train: LMExamples, *, config: LMDistillConfig,
                   vocabulary: int, device: torch.device, root: Path | None, ranks: Ranks,
                   show_progress: bool) -> tuple[TopKCache | None, float]:
    """The top-k cache (built by rank 0 once, opened by every rank) and the seconds it took;
    (None, 0) when the teacher runs in the loop or is not used."""
    if teacher is None:
        return None, 0.0
    teacher.to(device).eval()
    if not config.top_k:
        return None, 0.0
    started = time.perf_counter()
    cache = open_or_build(teacher, train, top_k=config.top_k, temperature=config.temperature,
                          vocabulary=vocabulary, root=root, device=device, ranks=ranks,
                          show_progress=show_progress)
    teacher.cpu()  # the loop reads the cache; free the device for the student
    return cache, time.perf_counter() - started


def _save_student(student: torch.nn.Module, tokenizer, folder: Path, *, config: LMDistillConfig,
                  teacher: torch.nn.Module | None, seconds: float, teacher_seconds: float) -> None:
    for parameter in student.parameters():  # frozen embeddings load as trainable again
        parameter.requires_grad_(True)
    student.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    teacher_name = getattr(getattr(teacher, "config", None), "_name_or_path", None)
    (folder / "edgekd-train.json").write_text(json.dumps(
        {"config": asdict(config), "teacher": teacher_name, "seconds": seconds,
         "teacher_seconds": teacher_seconds}, indent=2))
