"""The distillation loop: one explicit loop, AdamW with warm-up and linear decay.

Before the first step the teacher's outputs over the training data are computed once
and stored on disk (edgekd/distill/cache.py); every epoch, and every later run on the
same teacher and data, reads them instead of running the teacher. With
`teacher_cache=False` the teacher runs inside the loop instead.

Checkpoints (edgekd/distill/checkpoint.py) are written every `checkpoint_every` steps
and at the end of each epoch; `resume=True` continues from the latest one, mid-epoch,
and on CPU ends with exactly the student an uninterrupted run makes. Under torchrun
(edgekd/distill/distributed.py) the student is wrapped in DistributedDataParallel and
only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from edgekd.bench.accuracy import quality, torch_logits
from edgekd.config import DistillConfig
from edgekd.cpu_memory import reuse_freed_memory
from edgekd.data import Encoded, TextDataset, batches, encode
from edgekd.distill import checkpoint, distributed
from edgekd.distill.cache import default_cache_root, open_or_build
from edgekd.distill.distributed import Ranks
from edgekd.distill.dropout import training_masks
from edgekd.distill.objective import Needs, Objective, Trainee, forward_outputs
from edgekd.errors import UserError, atomic_dir
from edgekd.models import save_model
from edgekd.progress import console, progress_bar

# Settings a checkpoint may be resumed under although they differ from the original run:
# they change where and how fast the run goes, not what it computes.
RESUMABLE_CHANGES = {"device", "checkpoint_every", "compile", "teacher_cache"}


@dataclass(frozen=True)
class DistillResult:
    """What `distill` wrote and how the kept student did on the validation data."""

    student_dir: Path | None  # None on the ranks other than 0 under torchrun (rank 0 writes)
    best_epoch: int
    validation: dict  # accuracy, macro_f1, agreement, kl_to_teacher (empty without validation)
    seconds: float
    steps: int = 0  # optimiser steps taken in total (including those before a resume)
    samples_per_second: float = 0.0  # training rows per second of the loop (teacher outputs ready)
    teacher_seconds: float = 0.0  # building or opening the teacher cache (or 0 without one)


def distill(*, teacher: torch.nn.Module | None, student: torch.nn.Module, tokenizer,
            train: TextDataset, validation: TextDataset | None, config: DistillConfig,
            out: Path, overwrite: bool = False, show_progress: bool = True,
            resume: bool = False, cache_dir: Path | None = None) -> DistillResult:
    """Train `student` to imitate `teacher` on `train` and save it to `out`.

    With `teacher=None` this fine-tunes `student` on the labels alone (how the demo
    builds its teacher). The student with the best validation accuracy is kept.
    """
    if len(train) == 0:
        raise UserError("the training data is empty; give at least one example")
    if teacher is None and not train.has_labels:
        raise UserError("the training data has no labels and there is no teacher to learn from")
    if teacher is None and config.uses_intermediate_losses:
        raise UserError("hidden, attention and MiniLM losses need a teacher; set their weights to 0")
    reuse_freed_memory()  # each step's large gradient buffers reuse the last step's pages
    ranks, device, started = distributed.setup(config.device)
    try:
        return _distill(teacher, student, tokenizer, train, validation, config=config, out=Path(out),
                        overwrite=overwrite, show_progress=show_progress and ranks.is_main,
                        resume=resume, cache_root=Path(cache_dir) if cache_dir else default_cache_root(),
                        ranks=ranks, device=device)
    finally:
        distributed.teardown(started)


@dataclass
class Progress:
    """Where training stands; everything a checkpoint needs besides the tensors' owners."""

    step: int = 0
    epoch: int = 1
    batches_done: int = 0  # global batches of `epoch` already trained on
    best_epoch: int = 0
    best_metrics: dict = field(default_factory=dict)
    best_state: dict | None = None
    records: list = field(default_factory=list)  # metrics.jsonl lines so far


def _distill(teacher, student, tokenizer, train: TextDataset, validation: TextDataset | None, *,
             config: DistillConfig, out: Path, overwrite: bool, show_progress: bool, resume: bool,
             cache_root: Path, ranks: Ranks, device: torch.device) -> DistillResult:
    started = time.perf_counter()
    torch.manual_seed(config.seed)  # the projections start the same on every rank
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_encoded = encode(train, tokenizer, max_length=config.max_length)
    validation_encoded = (encode(validation, tokenizer, max_length=config.max_length)
                          if validation is not None and len(validation) else None)
    objective = Objective(config, student_config=student.config,
                          teacher_config=(teacher or student).config)
    trainee = Trainee(student, objective)
    checkpoints = checkpoint.checkpoint_dir(out)
    saved = _saved_state(checkpoints, config=config, resume=resume, overwrite=overwrite, ranks=ranks)
    output = atomic_dir(out, overwrite=overwrite) if ranks.is_main else contextlib.nullcontext(None)
    with output as staging:
        teacher_started = time.perf_counter()
        teacher_targets, teacher_validation = _teacher_sources(
            teacher, objective, train_encoded, validation_encoded, config=config, device=device,
            pad_token_id=pad_token_id, cache_root=cache_root, ranks=ranks, show_progress=show_progress)
        teacher_seconds = time.perf_counter() - teacher_started
        trainee.to(device)
        loop = _Loop(trainee, train_encoded, validation_encoded, teacher_targets, teacher_validation,
                     config=config, device=device, pad_token_id=pad_token_id, ranks=ranks,
                     checkpoints=checkpoints, metrics_path=staging / "metrics.jsonl" if staging else None,
                     show_progress=show_progress)
        progress, samples_per_second = loop.run(saved)
        if teacher is not None:
            teacher.cpu()
        student.cpu()
        if staging is not None:
            save_model(student, tokenizer, staging)
    ranks.barrier()
    if ranks.is_main:
        checkpoint.remove(checkpoints)  # the run finished: its student replaces the checkpoints
    return DistillResult(student_dir=out if ranks.is_main else None, best_epoch=progress.best_epoch, validation=progress.best_metrics,
                         seconds=time.perf_counter() - started, steps=progress.step,
                         samples_per_second=samples_per_second, teacher_seconds=teacher_seconds)


def _saved_state(folder: Path, *, config: DistillConfig, resume: bool, overwrite: bool,
                 ranks: Ranks) -> dict | None:
    """The checkpoint to continue from (with --resume), after checking it fits this run."""
    return checkpoint.to_resume(folder, config=config, resumable_changes=RESUMABLE_CHANGES,
                                resume=resume, overwrite=overwrite, ranks=ranks)


# ---------------------------------------------------------------------------- teacher outputs

TeacherTargets = Callable[[dict], dict]


def _teacher_sources(teacher, objective: Objective, train: Encoded, validation: Encoded | None, *,
                     config: DistillConfig, device: torch.device, pad_token_id: int, cache_root: Path,
                     ranks: Ranks, show_progress: bool) -> tuple[TeacherTargets | None, np.ndarray | None]:
    """Where each batch's teacher outputs come from, and the teacher's validation logits."""
    if teacher is None:
        return None, None
    needs = objective.needs("teacher")
    in_loop = objective.needs_teacher_logits or config.uses_intermediate_losses
    teacher.to(device)
    teacher_validation = None
    if validation is not None:
        teacher_validation = _validation_logits(teacher, validation, config=config, device=device,
                                                pad_token_id=pad_token_id, cache_root=cache_root,
                                                ranks=ranks, show_progress=show_progress)
    if not in_loop:
        return None, teacher_validation
    if not config.teacher_cache:
        return _online_teacher(teacher, needs, device), teacher_validation
    cache = open_or_build(teacher, train, needs, root=cache_root, device=device, pad_token_id=pad_token_id,
                          ranks=ranks, description="teacher outputs (train)", show_progress=show_progress)
    teacher.cpu()  # from here on the cache answers for it
    return (lambda batch: cache.gather(batch["index"].tolist(), width=batch["input_ids"].shape[1],
                                       device=device)), teacher_validation


def _online_teacher(teacher, needs: Needs, device: torch.device) -> TeacherTargets:
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    teacher.eval()

    @torch.no_grad()
    def targets(batch: dict) -> dict:
        with autocast:
            return forward_outputs(teacher, batch, needs)

    return targets


def _validation_logits(teacher, validation: Encoded, *, config: DistillConfig, device: torch.device,
                       pad_token_id: int, cache_root: Path, ranks: Ranks, show_progress: bool) -> np.ndarray:
    if not config.teacher_cache:
        return torch_logits(teacher, validation, pad_token_id=pad_token_id, device=str(device))
    cache = open_or_build(teacher, validation, Needs(), root=cache_root, device=device,
                          pad_token_id=pad_token_id, ranks=ranks,
                          description="teacher outputs (validation)", show_progress=show_progress)
    return cache.gather(list(range(len(validation))), width=1, device=torch.device("cpu"))["logits"].numpy()


# ---------------------------------------------------------------------------- the loop

def _schedule(step: int, *, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then linear decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


class _Loop:
    """One training run's state and steps; `run` is the loop, top to bottom."""

    def __init__(self, trainee: Trainee, train: Encoded, validation: Encoded | None,
                 teacher_targets: TeacherTargets | None, teacher_validation: np.ndarray | None, *,
                 config: DistillConfig, device: torch.device, pad_token_id: int, ranks: Ranks,
                 checkpoints: Path, metrics_path: Path | None, show_progress: bool) -> None:
        self.trainee, self.train, self.validation = trainee, train, validation
        self.teacher_targets, self.teacher_validation = teacher_targets, teacher_validation
        self.config, self.device, self.pad_token_id, self.ranks = config, device, pad_token_id, ranks
        self.checkpoints, self.metrics_path, self.show_progress = checkpoints, metrics_path, show_progress
        self.steps_per_epoch = math.ceil(len(train) / config.batch_size)
        self.total_steps = config.max_steps or self.steps_per_epoch * config.epochs
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        warmup_steps = max(1, round(config.warmup_fraction * self.total_steps))
        # fused: one kernel over all parameters, several times faster on CPU than the
        # per-tensor loop (the embedding matrix alone is most of a small student).
        self.optimizer = torch.optim.AdamW(trainee.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay, fused=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: _schedule(step, total_steps=self.total_steps,
                                                   warmup_steps=warmup_steps))
        self.model = self._wrap(trainee)
        self.tensorboard = _tensorboard(metrics_path.parent / "tensorboard") if metrics_path else None

    def _wrap(self, trainee: Trainee) -> torch.nn.Module:
        model = distributed.wrap(trainee, self.ranks, self.device)
        return torch.compile(model) if self.config.compile else model

    # -- checkpoints

    def _restore(self, saved: dict) -> Progress:
        self.trainee.load_state_dict(saved["trainee"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        rng = saved["rng"]
        checkpoint.restore_rng(rng[self.ranks.rank % len(rng)], self.device)
        best = saved["best"]
        progress = Progress(step=saved["step"], epoch=saved["epoch"], batches_done=saved["batches_done"],
                            best_epoch=best["epoch"], best_metrics=best["metrics"],
                            best_state=best["state"], records=list(saved["records"]))
        if self.show_progress:
            console.print(f"resuming from step {progress.step} (epoch {progress.epoch}, "
                          f"batch {progress.batches_done}) of {self.checkpoints}")
        return progress

    def _save(self, progress: Progress) -> None:
        rng = self.ranks.gather(checkpoint.rng_state(self.device))  # every rank's dropout stream
        if not self.ranks.is_main:
            return
        checkpoint.save(self.checkpoints, {
            "step": progress.step, "epoch": progress.epoch, "batches_done": progress.batches_done,
            "trainee": {k: v.detach().cpu() for k, v in self.trainee.state_dict().items()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": rng, "config": asdict(self.config), "records": progress.records,
            "best": {"epoch": progress.best_epoch, "metrics": progress.best_metrics,
                     "state": progress.best_state}})

    # -- the loop

    def run(self, saved: dict | None) -> tuple[Progress, float]:
        """Train to the end; returns the progress (best epoch kept) and samples/s."""
        if saved:
            progress = self._restore(saved)
        else:
            progress = Progress()
            torch.manual_seed(self.config.seed + self.ranks.rank)  # each rank its own dropout masks
        for record in progress.records:
            self._write(record)
        seen, training_seconds = 0, 0.0
        while progress.epoch <= self.epochs:
            epoch_started = time.perf_counter()
            seen += self._train_epoch(progress)
            training_seconds += time.perf_counter() - epoch_started
            self._end_epoch(progress, seconds=time.perf_counter() - epoch_started)
            if progress.step >= self.total_steps:
                break
        distributed.check_in_sync(self.trainee, self.ranks)
        if progress.best_state is not None:
            self.trainee.student.load_state_dict(progress.best_state)
        return progress, seen / training_seconds if training_seconds else 0.0

    def _train_epoch(self, progress: Progress) -> int:
        """Train the rest of `progress.epoch`; returns the rows this rank trained on."""
        config, epoch = self.config, progress.epoch
        self.trainee.train()
        seen, started = 0, time.perf_counter()
        skip_rows = min(len(self.train), progress.batches_done * config.batch_size)
        with progress_bar(f"epoch {epoch}/{self.epochs}", total=len(self.train),
                          enabled=self.show_progress) as advance:
            advance(skip_rows)
            all_batches = batches(self.train, batch_size=config.batch_size, pad_token_id=self.pad_token_id,
                                  shuffle=True, seed=config.seed + epoch)
            for number, batch in enumerate(all_batches):
                if number < progress.batches_done:
                    continue  # trained on before the checkpoint this run resumed from
                if progress.step >= self.total_steps:
                    break
                loss, parts = self._step(batch, progress)
                progress.step += 1
                progress.batches_done = number + 1
                seen += len(batch["index"])
                rate = seen / (time.perf_counter() - started)
                learning_rate = self.scheduler.get_last_lr()[0]
                advance(len(batch["index"]), loss=loss, lr=learning_rate, samples_per_s=rate)
                self._record(progress, {"step": progress.step, "epoch": epoch, "loss": loss,
                                        "lr": learning_rate, **parts})
                if config.checkpoint_every and progress.step % config.checkpoint_every == 0:
                    self._save(progress)
        return seen

    def _step(self, batch: dict, progress: Progress) -> tuple[float, dict]:
        """One optimiser step over one global batch: this rank's rows, in micro-batches."""
        rows = self.ranks.shard(list(range(len(batch["index"]))))
        pieces = [piece.tolist() for piece in np.array_split(rows, self.config.gradient_accumulation)]
        total_rows = len(batch["index"])
        loss_sum, parts_sum = torch.zeros((), device=self.device), {}
        for number, piece in enumerate(pieces):
            # Rows over the global batch, times the world size that DDP's mean divides out,
            # make the summed gradient the gradient of the global batch's mean loss.
            weight = len(piece) / total_rows * self.ranks.world
            piece = piece or [0]  # a rank without rows still joins DDP's all-reduce, at weight 0
            micro = {k: v[piece].to(self.device) for k, v in batch.items()}
            last = number == len(pieces) - 1
            sync = self.model.no_sync() if self.ranks.distributed and not last else contextlib.nullcontext()
            with sync:
                loss, parts = self._forward(micro)
                (loss * weight).backward()
            loss_sum += loss.detach() * weight / self.ranks.world  # this rank's share of the mean
            for name, value in parts.items():
                parts_sum[name] = parts_sum.get(name, 0.0) + value * weight / self.ranks.world
        loss_sum = self.ranks.sum(loss_sum)  # a NaN or inf on any rank shows up on all
        if not torch.isfinite(loss_sum):
            self.optimizer.zero_grad(set_to_none=True)
            raise UserError(checkpoint.non_finite_message(self.checkpoints, float(loss_sum),
                                                          step=progress.step + 1))
        torch.nn.utils.clip_grad_norm_(self.trainee.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss_sum), parts_sum

    def _forward(self, micro: dict) -> tuple[torch.Tensor, dict]:
        teacher = self.teacher_targets(micro) if self.teacher_targets is not None else None
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        with autocast, training_masks(self.device, compiled=self.config.compile):
            return self.model(micro, teacher)

    def _end_epoch(self, progress: Progress, *, seconds: float) -> None:
        """Evaluate, keep the best student, log, checkpoint at the epoch boundary."""
        metrics = self._evaluate() if self.ranks.is_main else {}
        self._record(progress, {"epoch": progress.epoch, "step": progress.step, "validation": metrics,
                                "seconds": seconds})
        if self.show_progress and metrics:
            console.print(f"  epoch {progress.epoch}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if self.ranks.is_main and (progress.best_state is None or not metrics
                                   or _score(metrics) > _score(progress.best_metrics)):
            progress.best_epoch, progress.best_metrics = progress.epoch, metrics
            progress.best_state = copy.deepcopy(
                {k: v.detach().cpu() for k, v in self.trainee.student.state_dict().items()})
        progress.epoch += 1
        progress.batches_done = 0
        if self.config.checkpoint_every:
            self._save(progress)

    def _evaluate(self) -> dict:
        if self.validation is None:
            return {}
        logits = torch_logits(self.trainee.student, self.validation, pad_token_id=self.pad_token_id,
                              device=str(self.device))
        labels = np.array([-1 if label is None else label for label in self.validation.labels])
        return quality(logits, labels, teacher_logits=self.teacher_validation)

    # -- logs

    def _record(self, progress: Progress, record: dict) -> None:
        if not self.ranks.is_main:
            return
        progress.records.append(record)
        self._write(record)

    def _write(self, record: dict) -> None:
        if self.metrics_path is None:
            return
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            values = record.get("validation", record)
            for name, value in values.items():
                if isinstance(value, float) and name not in ("epoch", "step"):
                    self.tensorboard.add_scalar(name, value, record["step"])


def _tensorboard(folder: Path):
    """A TensorBoard writer when tensorboard is installed; None otherwise."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder))


def _score(metrics: dict) -> float:
    """Higher is better: accuracy where labels exist, else agreement with the teacher."""
    for key in ("accuracy", "agreement"):
        value = metrics.get(key)
        if value is not None and not math.isnan(value):
            return value
    return -math.inf if not metrics else 0.0
