"""What every task's distill pipeline shares: the student's default learning rate, the
vocabulary trim, the shape a latency budget allows, and the verdict on a student no
better than guessing. Messages go to `log` (the command line prints them)."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from edgekd.errors import GateFailed, UserError

Log = Callable[[str], None]

RANDOM_INIT_LR = 1e-3  # the default lr of a randomly initialised --student-config student
# ... and of a student sliced from the teacher's width: benchmarks/shrink.py measured 3e-4 2.6 points
# (95% CI +0.4 to +4.8) above the layer cut's 1e-4 on the demo's 2x192 student
SLICED_LR = 3e-4


def student_lr(config, *, random_init: bool, reshaped: bool, given: set[str], log: Log):
    """`config` with the default lr of a student with random weights, or sliced to a new width
    (every task alone by this rule); unchanged when lr was given or the student keeps the
    teacher's width and weights."""
    if "lr" in given or not (random_init or reshaped):
        return config
    lr = RANDOM_INIT_LR if random_init else SLICED_LR
    log(f"student: {'random weights' if random_init else 'sliced from the teacher'}, so --lr {lr:g} "
        "(pass --lr to choose another)")
    return replace(config, lr=lr)


def vocabulary_trim(trim_vocab: bool, min_count: int | None, *, texts: list[str], held_out: list[str] | None,
                    tokenizer, model_config, max_drop: float | None = None):
    """The VocabTrim --trim-vocab asks for (edgekd/vocab.py), checked before training, or None;
    `max_drop`: the validation accuracy points it may cost (a classifier's)."""
    import dataclasses

    from edgekd.vocab import plan_trim

    if not trim_vocab:
        if min_count is not None:
            raise UserError("--trim-vocab-min-count only applies with --trim-vocab; add --trim-vocab or drop it")
        return None
    if max_drop is not None and not max_drop >= 0:
        raise UserError(f"--trim-vocab-max-drop must be 0 or more accuracy points, got {max_drop}")
    min_count = 1 if min_count is None else min_count
    if min_count < 1:
        raise UserError(f"--trim-vocab-min-count must be at least 1, got {min_count}")
    # a tokenizer that cannot be trimmed exactly fails here, before training
    plan = plan_trim(tokenizer, texts, held_out=held_out, min_count=min_count, model_config=model_config)
    return dataclasses.replace(plan, max_drop=max_drop)


def sized_student_config(teacher_model, tokenizer, *, task: str, budget_ms: float, target: str,
                         sequence_length: int, given: tuple, log: Log) -> str:
    """The --student-config a --latency-budget-ms chooses (edgekd/sizing.py)."""
    from edgekd.sizing import sized_spec

    if any(given):
        raise UserError("--latency-budget-ms chooses the student's shape itself; drop --student-layers, "
                        "--student-config and --student, or drop --latency-budget-ms")
    return sized_spec(teacher_model, tokenizer, task=task, budget_ms=budget_ms, target_name=target,
                      sequence_length=sequence_length, show=log)


def judge_student(student, *, allow_poor_student: bool, log: Log):
    """Log the run's last line; a student no better than guessing fails (GateFailed, exit code 2)
    unless allowed, when it is kept with a warning."""
    log(student.summary)
    if student.poor and not allow_poor_student:
        raise GateFailed(f"the student learnt nothing useful: {student.poor}; it is in {student.path}, but raise "
                         f"--lr (random weights: try {RANDOM_INIT_LR:g}), train longer or slice the student from "
                         "the teacher (--student-config without --student-init random); --allow-poor-student keeps "
                         "it without failing")
    if student.poor:
        log(f"warning: the student learnt nothing useful: {student.poor} (kept: --allow-poor-student)")
    return student


def classifier_student(result, validation, *, task: str, unit: str):
    """A classifier's Student (text or images): the best epoch's metrics, and whether it guesses."""
    from edgekd.metrics import near_chance
    from edgekd.results import Student

    summary = "  ".join(f"{k} {v:.4f}" for k, v in result.validation.items())
    line = (f"student written to {result.student_dir} (best epoch {result.best_epoch}"
            f"{'; validation ' + summary if summary else ''}; {result.steps} steps, "
            f"{result.samples_per_second:.1f} {unit}/s; {result.seconds:.0f}s)")
    poor = validation is not None and near_chance(result.validation.get("accuracy", float("nan")),
                                                  teacher_accuracy=result.teacher_validation.get("accuracy"),
                                                  labels=validation.labels)
    return Student(path=result.student_dir, task=task, steps=result.steps, seconds=result.seconds, summary=line,
                   validation=dict(result.validation), best_epoch=result.best_epoch,
                   vocabulary=getattr(result, "vocabulary", None), poor=poor or None)


def held_out(train, *, options: dict, config, read):
    """(validation, train): --validation-data read by `read(source, split)`, else a
    --validation-fraction slice of the training rows (from 20 rows on, at most --validation-rows
    of them: the teacher runs over every one before the first step), else none."""
    from edgekd.data import split as split_rows

    if options["validation_data"] is not None:
        return read(options["validation_data"], options["validation_split"]), train
    if config.validation_fraction > 0 and len(train) >= 20:
        share = min(config.validation_fraction, config.validation_rows / len(train))
        validation, rest = split_rows(train, fractions=[share, 1.0], seed=config.seed)
        return validation, rest
    return None, train


def check_writable(out, *, overwrite: bool) -> None:
    """Fail before any work when `out` exists (without overwrite) or cannot be created."""
    import os
    from pathlib import Path

    out = Path(out)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output folder {out} already exists; pass --overwrite or choose another --out")
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if parent != out and not parent.is_dir():
        raise UserError(f"cannot create {out}: {parent} is a file, not a folder; choose another --out")
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write under {parent} (permission denied); choose a writable --out")


def label2id_of(model) -> dict[str, int]:
    return {str(name): int(i) for i, name in model.config.id2label.items()}


def saved_label2id(folder) -> dict[str, int]:
    """The label names of the model saved in `folder` (its config.json), without loading it."""
    import json
    from pathlib import Path

    config = json.loads((Path(folder) / "config.json").read_text())
    return {str(name): int(index) for index, name in (config.get("id2label") or {}).items()}
