"""The causal-LM distillation loop: one explicit loop over a fixed budget of steps.

The teacher is used one of two ways: online (its full next-token distribution every
step) or, with `top_k > 0`, through the sparse top-k cache built once before the first
step (edgekd/lm/cache.py). With no teacher, or `ce_weight` 1, the loop is plain
language-model fine-tuning, the baseline that distillation is measured against.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from edgekd.errors import UserError, atomic_dir
from edgekd.lm.cache import TopKCache, open_or_build
from edgekd.lm.data import LMExamples, batches
from edgekd.lm.losses import (DIVERGENCES, causal_lm_cross_entropy, distillation_loss,
                              shift_for_next_token, sparse_distillation_loss)
from edgekd.progress import progress_bar


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


@dataclass(frozen=True)
class LMDistillConfig:
    """How a causal-LM student learns from its teacher."""

    steps: int = 200  # optimiser steps (the loop cycles over the data as often as needed)
    lr: float = 3e-4  # peak AdamW learning rate, reached after warm-up
    batch_size: int = 8  # texts per step
    max_length: int = 128  # tokens per text after truncation
    divergence: str = "forward_kl"  # forward_kl, reverse_kl or jsd
    beta: float = 0.5  # JSD weight on the teacher (0 -> forward KL, 1 -> reverse KL)
    temperature: float = 1.0  # softens both distributions inside the divergence (times T^2)
    ce_weight: float = 0.5  # weight of next-token cross-entropy; 1 - ce_weight goes to the divergence
    top_k: int = 64  # teacher tokens cached per position; 0 runs the teacher every step (dense)
    seed: int = 0  # shuffling and initialisation
    device: str = "auto"  # auto (cuda when available), cpu or cuda
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU, where fp32 is faster)
    warmup_fraction: float = 0.1  # share of steps with a linearly rising learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    max_grad_norm: float = 1.0  # gradients are clipped to this global norm
    train_embeddings: bool = True  # False freezes token embeddings and output head: the
    # student starts from the teacher's, and on a CPU this skips the largest weight gradient

    def __post_init__(self) -> None:
        _check(self.steps >= 1, f"--steps must be at least 1, got {self.steps}")
        _check(0 < self.lr < 1, f"--lr must be in (0, 1), got {self.lr}")
        _check(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        _check(2 <= self.max_length <= 1_000_000, f"--max-length must be at least 2, got {self.max_length}")
        _check(self.divergence in DIVERGENCES,
               f"--divergence {self.divergence!r} is not one of {', '.join(DIVERGENCES)}")
        _check(0 <= self.beta <= 1, f"--beta must be in [0, 1], got {self.beta}")
        _check(self.temperature > 0, f"--temperature must be positive, got {self.temperature}")
        _check(0 <= self.ce_weight <= 1, f"--ce-weight must be in [0, 1], got {self.ce_weight}")
        _check(self.top_k >= 0, f"--top-k must be 0 (dense teacher) or positive, got {self.top_k}")
        _check(self.device in ("auto", "cpu", "cuda"), f"--device must be auto, cpu or cuda, got {self.device}")
        _check(0 <= self.warmup_fraction < 1, f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")


@dataclass(frozen=True)
class LMDistillResult:
    """What the loop wrote and how fast it went."""

    student_dir: Path
    steps: int
    seconds: float  # the loop alone (teacher cache ready)
    teacher_seconds: float  # building or opening the top-k cache (0 when dense or no teacher)
    tokens_per_second: float  # predicted tokens per second of the loop
    final_loss: float
    cache_bytes_per_token: float = 0.0


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                        ("cpu" if name == "auto" else name))


def learning_rate(step: int, *, total: int, peak: float, warmup_fraction: float) -> float:
    """Linear warm-up to `peak`, then linear decay to 0."""
    warmup = max(1, int(total * warmup_fraction))
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def step_loss(student: torch.nn.Module, batch: dict, *, teacher: torch.nn.Module | None,
              cache: TopKCache | None, vocabulary: int, config: LMDistillConfig) -> torch.Tensor:
    """ce_weight * next-token CE + (1 - ce_weight) * divergence from the teacher."""
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits, targets, mask = shift_for_next_token(logits[..., :vocabulary], batch["labels"])
    cross_entropy = causal_lm_cross_entropy(logits, targets)
    if config.ce_weight == 1 or (teacher is None and cache is None):
        return cross_entropy
    options = dict(kind=config.divergence, beta=config.beta, temperature=config.temperature, mask=mask)
    if cache is not None:
        top_ids, top_log_probs = cache.gather(batch["index"].tolist(), width=batch["input_ids"].shape[1])
        divergence = sparse_distillation_loss(logits, top_ids.to(logits.device),
                                              top_log_probs.to(logits.device), **options)
    else:
        with torch.no_grad():
            teacher_logits = teacher(input_ids=batch["input_ids"],
                                     attention_mask=batch["attention_mask"]).logits
        divergence = distillation_loss(logits, teacher_logits[:, :-1, :vocabulary], **options)
    return config.ce_weight * cross_entropy + (1 - config.ce_weight) * divergence


def distill_lm(*, teacher: torch.nn.Module | None, student: torch.nn.Module, tokenizer,
               train: LMExamples, config: LMDistillConfig, out: Path, vocabulary: int,
               overwrite: bool = False, show_progress: bool = True,
               cache_root: Path | None = None) -> LMDistillResult:
    """Train `student` on `train` for `config.steps` steps and save it to `out`."""
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    uses_teacher = teacher is not None and config.ce_weight < 1
    cache, teacher_seconds = None, 0.0
    if uses_teacher:
        teacher.to(device).eval()
    if uses_teacher and config.top_k:
        started = time.perf_counter()
        cache = open_or_build(teacher, train, top_k=config.top_k, temperature=config.temperature,
                              vocabulary=vocabulary, root=cache_root, device=device,
                              show_progress=show_progress)
        teacher_seconds = time.perf_counter() - started
        teacher.cpu()  # the loop reads the cache; free the device for the student
    with atomic_dir(Path(out), overwrite=overwrite) as staging:
        seconds, tokens, final_loss = _loop(student, teacher if uses_teacher else None, cache, train,
                                            config=config, device=device, vocabulary=vocabulary,
                                            log_file=staging / "metrics.jsonl", show_progress=show_progress)
        student.cpu().eval()
        for parameter in student.parameters():
            parameter.requires_grad_(True)
        student.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "edgekd-train.json").write_text(json.dumps(
            {"config": asdict(config), "teacher": getattr(getattr(teacher, "config", None), "_name_or_path", None),
             "seconds": seconds, "teacher_seconds": teacher_seconds}, indent=2))
    return LMDistillResult(student_dir=Path(out), steps=config.steps, seconds=seconds,
                           teacher_seconds=teacher_seconds, tokens_per_second=tokens / max(seconds, 1e-9),
                           final_loss=final_loss,
                           cache_bytes_per_token=cache.bytes_per_token if cache else 0.0)


def _batches_forever(train: LMExamples, *, batch_size: int, seed: int):
    epoch = 0
    while True:
        yield from batches(train, batch_size=batch_size, shuffle=True, seed=seed + epoch)
        epoch += 1


def _loop(student, teacher, cache, train: LMExamples, *, config: LMDistillConfig,
          device: torch.device, vocabulary: int, log_file: Path, show_progress: bool):
    student.to(device).train()
    if not config.train_embeddings:
        student.get_input_embeddings().weight.requires_grad_(False)
        student.get_output_embeddings().weight.requires_grad_(False)
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and config.bf16
                else contextlib.nullcontext())
    stream = _batches_forever(train, batch_size=config.batch_size, seed=config.seed)
    started, tokens, loss_value = time.perf_counter(), 0, math.nan
    with progress_bar("distill", total=config.steps, enabled=show_progress) as advance, \
            log_file.open("w") as log:
        for step in range(config.steps):
            batch = next(stream)
            lr = learning_rate(step, total=config.steps, peak=config.lr, warmup_fraction=config.warmup_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            device_batch = {name: tensor.to(device) for name, tensor in batch.items()}
            with autocast:
                loss = step_loss(student, device_batch, teacher=teacher, cache=cache,
                                 vocabulary=vocabulary, config=config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            loss_value = loss.item()
            tokens += int((batch["labels"][:, 1:] != -100).sum())
            log.write(json.dumps({"step": step + 1, "loss": loss_value, "lr": lr}) + "\n")
            log.flush()  # a long run can be followed with tail -f
            advance(1, loss=loss_value)
    return time.perf_counter() - started, tokens, loss_value
