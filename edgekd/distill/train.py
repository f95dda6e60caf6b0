"""The distillation loop: one explicit loop, AdamW with warm-up and linear decay.

The teacher's logits over the training data are computed once before the first epoch
and reused every epoch (the teacher never runs inside the loop).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgekd.bench.accuracy import quality, torch_logits
from edgekd.config import DistillConfig
from edgekd.data import Encoded, TextDataset, batches, encode
from edgekd.distill.losses import kd_loss
from edgekd.errors import UserError, atomic_dir
from edgekd.models import model_inputs, save_model
from edgekd.progress import console, progress_bar


@dataclass(frozen=True)
class DistillResult:
    """What `distill` wrote and how the kept student did on the validation data."""

    student_dir: Path
    best_epoch: int
    validation: dict  # accuracy, macro_f1, agreement, kl_to_teacher (empty without validation)
    seconds: float


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; "
                        "use --device cpu or auto")
    return torch.device(name)


def distill(*, teacher: torch.nn.Module | None, student: torch.nn.Module, tokenizer,
            train: TextDataset, validation: TextDataset | None, config: DistillConfig,
            out: Path, overwrite: bool = False, show_progress: bool = True) -> DistillResult:
    """Train `student` to imitate `teacher` on `train` and save it to `out`.

    With `teacher=None` this fine-tunes `student` on the labels alone (how the demo
    builds its teacher). The student with the best validation accuracy is kept.
    """
    if len(train) == 0:
        raise UserError("the training data is empty; give at least one example")
    if teacher is None and not train.has_labels:
        raise UserError("the training data has no labels and there is no teacher to learn from")
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_encoded = encode(train, tokenizer, max_length=config.max_length)
    validation_encoded = (encode(validation, tokenizer, max_length=config.max_length)
                          if validation is not None and len(validation) else None)

    with atomic_dir(Path(out), overwrite=overwrite) as staging:
        teacher_train = teacher_validation = None
        if teacher is not None:
            teacher.to(device)
            teacher_train = _teacher_logits(teacher, train_encoded, "teacher logits (train)",
                                            pad_token_id, device, show_progress)
            if validation_encoded is not None:
                teacher_validation = _teacher_logits(
                    teacher, validation_encoded, "teacher logits (validation)",
                    pad_token_id, device, show_progress).numpy()
            teacher.cpu()
        student.to(device)
        best_epoch, best_metrics = _train(
            student, train_encoded, validation_encoded, teacher_train, teacher_validation,
            config=config, device=device, pad_token_id=pad_token_id,
            metrics_path=staging / "metrics.jsonl", show_progress=show_progress)
        student.cpu()
        save_model(student, tokenizer, staging)
    return DistillResult(student_dir=Path(out), best_epoch=best_epoch, validation=best_metrics,
                         seconds=time.perf_counter() - started)


def _teacher_logits(teacher, encoded: Encoded, description: str, pad_token_id: int,
                    device: torch.device, show_progress: bool) -> torch.Tensor:
    with progress_bar(description, total=len(encoded), enabled=show_progress) as advance:
        logits = torch_logits(teacher, encoded, pad_token_id=pad_token_id, batch_size=32,
                              device=str(device), progress=advance)
    return torch.from_numpy(logits)  # (rows, num_labels)


def _schedule(step: int, *, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then linear decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def _train(student, train: Encoded, validation: Encoded | None,
           teacher_train: torch.Tensor | None, teacher_validation: np.ndarray | None, *,
           config: DistillConfig, device: torch.device, pad_token_id: int,
           metrics_path: Path, show_progress: bool) -> tuple[int, dict]:
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = max(1, round(config.warmup_fraction * total_steps))
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _schedule(step, total_steps=total_steps, warmup_steps=warmup_steps))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    best_epoch, best_metrics, best_state = 0, {}, None
    step = 0
    for epoch in range(1, config.epochs + 1):
        student.train()
        seen, epoch_started = 0, time.perf_counter()
        with progress_bar(f"epoch {epoch}/{config.epochs}", total=len(train),
                          enabled=show_progress) as advance:
            for batch in batches(train, batch_size=config.batch_size, pad_token_id=pad_token_id,
                                 shuffle=True, seed=config.seed + epoch):
                inputs = {k: v.to(device) for k, v in model_inputs(student, batch).items()}
                labels = batch["labels"].to(device)
                teacher_logits = (None if teacher_train is None
                                  else teacher_train[batch["index"]].to(device))
                with autocast:
                    student_logits = student(**inputs).logits
                loss = kd_loss(student_logits, teacher_logits, labels,
                               temperature=config.temperature, alpha=config.alpha)
                if not torch.isfinite(loss):
                    raise UserError(f"the loss became {loss.item()} at step {step}; "
                                    "lower --lr or check the data")
                loss.backward()
                torch.nn.utils.clip_grad_norm_(student.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                seen += len(labels)
                rate = seen / (time.perf_counter() - epoch_started)
                advance(len(labels), loss=loss.item(), lr=scheduler.get_last_lr()[0],
                        samples_per_s=rate)
                _log(metrics_path, {"step": step, "epoch": epoch, "loss": loss.item(),
                                    "lr": scheduler.get_last_lr()[0]})
        metrics = {}
        if validation is not None:
            logits = torch_logits(student, validation, pad_token_id=pad_token_id,
                                  device=str(device))
            metrics = quality(logits, np.array([-1 if l is None else l for l in validation.labels]),
                              teacher_logits=teacher_validation)
        _log(metrics_path, {"epoch": epoch, "step": step, "validation": metrics,
                            "seconds": time.perf_counter() - epoch_started})
        if show_progress and metrics:
            console.print(f"  epoch {epoch}: " + "  ".join(
                f"{k} {v:.4f}" for k, v in metrics.items()))
        score = _score(metrics)
        if best_state is None or not metrics or score > _score(best_metrics):  # no validation: keep the last
            best_epoch, best_metrics = epoch, metrics
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in student.state_dict().items()})
    student.load_state_dict(best_state)
    return best_epoch, best_metrics


def _score(metrics: dict) -> float:
    """Higher is better: accuracy where labels exist, else agreement with the teacher."""
    for key in ("accuracy", "agreement"):
        value = metrics.get(key)
        if value is not None and not math.isnan(value):
            return value
    return -math.inf if not metrics else 0.0


def _log(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
