"""Text-classification distillation: the stage that prepares the teacher, hands the task's
pieces to the one training loop (edgekd/training/loop.py) and saves the student.

The teacher's outputs over the training data are computed once, a shard at a time as the
first epoch reaches it, and stored on disk (edgekd/training/cache.py); every later epoch, and
every later run on the same teacher, data and seed, reads them instead of running the
teacher. With `teacher_cache=False` the teacher runs inside the loop instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from edgekd.config import DistillConfig
from edgekd.data import Encoded, TextDataset, Tokenised, collate, encode
from edgekd.training.cache import default_cache_root, open_or_build
from edgekd.training.distributed import Ranks
from edgekd.training.loop import Trainee, check_first_batch, train as run_loop, training_order
from edgekd.training.objective import Needs, Objective, ProjectedStudent, forward_outputs
from edgekd.errors import UserError
from edgekd.metrics import quality, torch_logits
from edgekd.models import save_model
from edgekd.vocab import VocabTrim, save_record

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
    teacher_validation: dict = field(default_factory=dict)  # the teacher's accuracy, macro_f1 on the validation data
    vocabulary: dict = field(default_factory=dict)  # with a VocabTrim: what was kept (edgekd/vocab.py)


def distill(*, teacher: torch.nn.Module | None, student: torch.nn.Module, tokenizer,
            train: TextDataset, validation: TextDataset | None, config: DistillConfig,
            out: Path, overwrite: bool = False, show_progress: bool = True,
            resume: bool = False, cache_dir: Path | None = None, trim: VocabTrim | None = None) -> DistillResult:
    """Train `student` to imitate `teacher` on `train` and save it to `out`.

    With `teacher=None` this fine-tunes `student` on the labels alone (how the demo
    builds its teacher). The student with the best validation accuracy is kept; with
    `trim`, its vocabulary is trimmed to the training text's tokens as it is saved, and
    `validation` then holds the trimmed student's metrics (those before in
    `vocabulary["before_trim"]`).
    """
    if len(train) == 0:
        raise UserError("the training data is empty; give at least one example")
    if teacher is None and not train.has_labels:
        raise UserError("the training data has no labels and there is no teacher to learn from")
    if teacher is None and config.uses_intermediate_losses:
        raise UserError("hidden, attention and MiniLM losses need a teacher; set their weights to 0")
    started = time.perf_counter()
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    cache_root = Path(cache_dir) if cache_dir else default_cache_root()
    teacher_quality: dict = {}
    found: dict = {}  # what prepare learns and save needs

    def prepare(*, device: torch.device, ranks: Ranks, show_progress: bool) -> Trainee:
        train_encoded = Tokenised(train, tokenizer, max_length=config.max_length)  # a batch at a time
        validation_encoded = (encode(validation, tokenizer, max_length=config.max_length)
                              if validation is not None and len(validation) else None)
        objective = Objective(config, student_config=student.config, teacher_config=(teacher or student).config)
        trainee = ProjectedStudent(student, objective)
        first = collate(train_encoded, list(range(min(2, len(train_encoded)))), pad_token_id=pad_token_id)
        check_first_batch({"teacher": teacher, "student": student}, lambda role, model, device: forward_outputs(
            model, {name: value.to(device) for name, value in first.items()}, objective.needs(role)))
        teacher_targets, teacher_validation, teacher_seconds = _teacher_sources(
            teacher, objective, train_encoded, validation_encoded, config=config, device=device,
            pad_token_id=pad_token_id, cache_root=cache_root, ranks=ranks, show_progress=show_progress)

        def loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
            return model(batch, teacher_targets(batch) if teacher_targets is not None else None)

        validation_labels = None if validation_encoded is None else \
            np.array([-1 if label is None else label for label in validation_encoded.labels])

        def evaluate() -> dict:
            logits = torch_logits(student, validation_encoded, pad_token_id=pad_token_id, device=str(device))
            return quality(logits, validation_labels, teacher_logits=teacher_validation)

        if teacher_validation is not None:
            teacher_quality.update(quality(teacher_validation, validation_labels, teacher_logits=None))
        found.update(validation_labels=validation_labels, teacher_validation=teacher_validation)

        return Trainee(task="text-classification", module=trainee, student=student,
                           examples=len(train_encoded),
                           collate=lambda indices: collate(train_encoded, indices, pad_token_id=pad_token_id),
                           units=lambda batch: len(batch["index"]), loss=loss,
                           evaluate=evaluate if validation_encoded is not None else None,
                           teacher_seconds=teacher_seconds)

    def save(folder: Path, seconds: float) -> None:
        if trim is None:
            save_model(student, tokenizer, folder)
            return
        small, small_tokenizer, record = trim.apply(student)
        if validation is not None and len(validation):
            encoded = encode(validation, small_tokenizer, max_length=config.max_length)
            pad = small_tokenizer.pad_token_id if small_tokenizer.pad_token_id is not None else 0
            record["validation"] = quality(torch_logits(small, encoded, pad_token_id=pad),
                                           found["validation_labels"], teacher_logits=found["teacher_validation"])
            if trim.max_drop is not None:  # judged on held-out accuracy, not only on coverage
                whole = quality(torch_logits(student, encode(validation, tokenizer, max_length=config.max_length),
                                             pad_token_id=pad_token_id),
                                found["validation_labels"], teacher_logits=found["teacher_validation"])
                if not judge_trim(record, whole=whole, max_drop=trim.max_drop):
                    small, small_tokenizer = student, tokenizer
        save_model(small, small_tokenizer, folder)
        save_record(folder, record)
        found["vocabulary"] = record

    trained = train_classifier(task="text-classification", teacher=teacher, config=config, out=out,
                               examples=len(train), prepare=prepare, save=save, overwrite=overwrite, resume=resume,
                               show_progress=show_progress)
    vocabulary = found.get("vocabulary", {})
    validation_metrics = trained.progress.best_metrics
    if "validation" in vocabulary:
        vocabulary["before_trim"], validation_metrics = validation_metrics, vocabulary["validation"]
    return result_of(trained, started=started, validation=validation_metrics, teacher_validation=teacher_quality,
                     vocabulary=vocabulary)


def judge_trim(record: dict, *, whole: dict, max_drop: float) -> bool:
    """Whether a trim is kept: what it cost in validation accuracy (`record["validation"]`, the
    trimmed student's, against `whole`, the student's before trimming) within `max_drop` points.
    A trim that is not kept says why, and the record holds the whole student's metrics."""
    record["accuracy_change"] = 100 * (record["validation"]["accuracy"] - whole["accuracy"])
    if -record["accuracy_change"] <= max_drop:
        return True
    record["not_kept"] = (f"it cost {-record['accuracy_change']:.2f} validation accuracy points, over "
                          f"--trim-vocab-max-drop {max_drop:g}")
    record["validation"] = whole
    return False


def train_classifier(*, task: str, teacher: torch.nn.Module | None, config, out: Path, examples: int,
                     prepare: Callable[..., Trainee], save: Callable[[Path, float], None], overwrite: bool,
                     resume: bool, show_progress: bool):
    """The training loop for a classifier of text or images; the teacher back on the CPU after it."""
    trained = run_loop(task=task, config=config, out=out, examples=examples, prepare=prepare, save=save,
                       resumable_changes=RESUMABLE_CHANGES, overwrite=overwrite, resume=resume,
                       show_progress=show_progress, teacher=teacher)
    if teacher is not None:
        teacher.cpu()
    return trained


def result_of(trained, *, started: float, validation: dict, teacher_validation: dict,
              vocabulary: dict | None = None) -> DistillResult:
    """A classifier's DistillResult from what the loop returned."""
    progress = trained.progress
    return DistillResult(student_dir=trained.out, best_epoch=progress.best_epoch, validation=validation,
                         seconds=time.perf_counter() - started, steps=progress.step,
                         samples_per_second=trained.units_per_second, teacher_seconds=trained.prepare_seconds,
                         teacher_validation=teacher_validation, vocabulary=vocabulary or {})


# ---------------------------------------------------------------------------- teacher outputs

TeacherTargets = Callable[[dict], dict]


def _teacher_sources(teacher, objective: Objective, train: Tokenised, validation: Encoded | None, *,
                     config: DistillConfig, device: torch.device, pad_token_id: int, cache_root: Path,
                     ranks: Ranks, show_progress: bool
                     ) -> tuple[TeacherTargets | None, np.ndarray | None, Callable[[], float]]:
    """Where each batch's teacher outputs come from, the teacher's validation logits, and how
    long the teacher cache has been written in training steps so far."""
    none = lambda: 0.0  # noqa: E731
    if teacher is None:
        return None, None, none
    needs = objective.needs("teacher")
    in_loop = objective.needs_teacher_logits or config.uses_intermediate_losses
    teacher.to(device)
    teacher_validation = None
    if validation is not None:
        teacher_validation = _validation_logits(teacher, validation, config=config, device=device,
                                                pad_token_id=pad_token_id, cache_root=cache_root,
                                                ranks=ranks, show_progress=show_progress)
    if not in_loop:
        return None, teacher_validation, none
    if not config.teacher_cache:
        return _online_teacher(teacher, needs, device), teacher_validation, none
    # one process: written as training reads it (the first step waits for one shard); torchrun: built first
    cache = open_or_build(teacher, train, needs, root=cache_root, device=device, pad_token_id=pad_token_id,
                          ranks=ranks, description="teacher outputs (train)", show_progress=show_progress,
                          order=training_order(len(train), config), lazy=not ranks.distributed)
    return (lambda batch: cache.gather(batch["index"].tolist(), width=batch["input_ids"].shape[1],
                                       device=device)), teacher_validation, lambda: cache.build_seconds


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
