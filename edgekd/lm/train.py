"""Causal-LM distillation: the stage that prepares the teacher, hands the task's pieces to
the one training loop (edgekd/training/loop.py) and saves the student.

The teacher is used one of two ways: online (its full next-token distribution every
step) or, with `top_k > 0`, through the sparse top-k cache built once before the first
step (edgekd/training/cache.py). With no teacher, or `hard_label_weight` 1, the loop is plain
language-model fine-tuning, the baseline that distillation is measured against. A batch's
loss is a mean over its predicted tokens, so the loop weighs micro-batches and ranks by them.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgekd.training.distributed import Ranks
from edgekd.training.loop import Trainee, check_first_batch, train as loop_train, training_order
from edgekd.config import LMDistillConfig
from edgekd.training.cache import TopKCache, open_or_build_top_k
from edgekd.lm.data import LMExamples, TokenRows, collate
from edgekd.vocab import VocabTrim, save_record
from edgekd.lm.losses import (causal_lm_cross_entropy, distillation_loss, shift_for_next_token,
                              sparse_distillation_loss)

# Settings a checkpoint may be resumed under although they differ from the original run:
# they change where the run goes and how often it saves, not what it computes.
RESUMABLE_CHANGES = {"device", "checkpoint_every"}


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
    vocabulary: dict = field(default_factory=dict)  # with a VocabTrim: what was kept (edgekd/vocab.py)


def distill_lm(*, teacher: torch.nn.Module | None, student: torch.nn.Module, tokenizer,
               train: LMExamples, config: LMDistillConfig, out: Path, vocabulary: int,
               overwrite: bool = False, show_progress: bool = True,
               cache_root: Path | None = None, resume: bool = False, trim: VocabTrim | None = None) -> LMDistillResult:
    """Train `student` on `train` for `config.total_steps(len(train))` steps and save it to `out`.

    With `resume` the run continues from the checkpoint beside `out` (OUT.checkpoints/).
    Under torchrun every rank calls this: each trains on its rows of every batch and builds
    every N-th shard of the teacher cache, and rank 0 alone writes checkpoints, metrics and
    the student.
    With `trim`, the student is saved with its vocabulary (embedding, output head, tokenizer)
    trimmed to the training text's tokens (edgekd/vocab.py).
    """
    uses_teacher = teacher is not None and config.hard_label_weight < 1
    found: dict = {}

    def prepare(*, device: torch.device, ranks: Ranks, show_progress: bool) -> Trainee:
        first = collate(train, list(range(min(2, len(train)))))
        check_first_batch({"teacher": teacher if uses_teacher else None, "student": student},
                          lambda role, model, device: model(input_ids=first["input_ids"].to(device),
                                                            attention_mask=first["attention_mask"].to(device)))
        cache, found["open_seconds"] = _teacher_cache(
            teacher if uses_teacher else None, train, config=config, vocabulary=vocabulary, device=device,
            root=cache_root, ranks=ranks, show_progress=show_progress)
        found["cache"] = cache
        online = teacher if uses_teacher and cache is None else None
        if not config.train_embeddings:
            student.get_input_embeddings().weight.requires_grad_(False)
            student.get_output_embeddings().weight.requires_grad_(False)

        def loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
            return step_loss(model, batch, teacher=online, cache=cache, vocabulary=vocabulary, config=config), {}

        return Trainee(task="causal-lm", module=student, student=student, examples=len(train),
                       collate=lambda indices: collate(train, indices), units=predicted_tokens, loss=loss,
                       autocast=config.bf16, unit="tokens",
                       teacher_seconds=teacher_seconds)

    def teacher_seconds() -> float:  # opening the top-k cache, and writing it (before or during the steps)
        cache = found.get("cache")
        return found.get("open_seconds", 0.0) + (cache.build_seconds if cache is not None else 0.0)

    def save(folder: Path, seconds: float) -> None:
        model, model_tokenizer = student.eval(), tokenizer
        if trim is not None:
            model, model_tokenizer, found["vocabulary"] = trim.apply(student)
            save_record(folder, found["vocabulary"])
        _save_student(model, model_tokenizer, folder, config=config, teacher=teacher, seconds=seconds,
                      teacher_seconds=teacher_seconds())

    trained = loop_train(task="causal-lm", config=config, out=out, examples=len(train), prepare=prepare,
                         save=save, resumable_changes=RESUMABLE_CHANGES, overwrite=overwrite, resume=resume,
                         show_progress=show_progress, teacher=teacher if uses_teacher else None)
    student.eval()
    records = [record for record in trained.progress.records if "loss" in record]
    cache = found["cache"]
    return LMDistillResult(student_dir=trained.out, steps=trained.progress.step, seconds=trained.seconds,
                           teacher_seconds=teacher_seconds(), tokens_per_second=trained.units_per_second,
                           final_loss=records[-1]["loss"] if records else math.nan,
                           cache_bytes_per_token=cache.bytes_per_token if cache else 0.0,
                           vocabulary=found.get("vocabulary", {}))


def step_loss(student: torch.nn.Module, batch: dict, *, teacher: torch.nn.Module | None,
              cache: TopKCache | None, vocabulary: int, config: LMDistillConfig) -> torch.Tensor:
    """w * next-token CE + (1 - w) * divergence from the teacher (w: the hard-label weight),
    each a mean over the batch's predicted tokens."""
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits, targets, mask = shift_for_next_token(logits[..., :vocabulary], batch["labels"])
    cross_entropy = causal_lm_cross_entropy(logits, targets)
    if config.hard_label_weight == 1 or (teacher is None and cache is None):
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
    return config.hard_label_weight * cross_entropy + (1 - config.hard_label_weight) * divergence


def predicted_tokens(batch: dict) -> int:
    """Next-token predictions a batch's loss is a mean over: learnt tokens after the first."""
    return int((batch["labels"][:, 1:] != -100).sum())


def _teacher_cache(teacher: torch.nn.Module | None, train: LMExamples, *, config: LMDistillConfig,
                   vocabulary: int, device: torch.device, root: Path | None, ranks: Ranks,
                   show_progress: bool) -> tuple[TopKCache | None, float]:
    """The top-k cache (on one process written as training reads it; under torchrun built first,
    each rank its share of the shards) and the seconds opening it took, besides writing it;
    (None, 0) when the teacher runs in the loop or is not used."""
    if teacher is None:
        return None, 0.0
    teacher.to(device).eval()
    if not config.top_k:
        return None, 0.0
    started = time.perf_counter()
    # one process: written as training reads it (the first step waits for one shard); torchrun: built first
    cache = open_or_build_top_k(teacher, train, top_k=config.top_k, temperature=config.temperature,
                                vocabulary=vocabulary, root=root, device=device, ranks=ranks,
                                show_progress=show_progress, order=training_order(len(train), config),
                                lazy=not ranks.distributed)
    return cache, time.perf_counter() - started - cache.build_seconds


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


# ---------------------------------------------------------------------------- a student that learnt nothing

GUARD_TEXTS = 32  # training texts the chance check scores (a few seconds on a CPU)


@torch.no_grad()
def mean_cross_entropy(model: torch.nn.Module, examples: LMExamples, *, vocabulary: int) -> float:
    """Next-token cross-entropy per learnt token over the first GUARD_TEXTS examples."""
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, min(GUARD_TEXTS, len(examples)), 8):
        batch = collate(examples, list(range(start, min(start + 8, GUARD_TEXTS, len(examples)))))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits, targets, mask = shift_for_next_token(logits[..., :vocabulary], batch["labels"])
        count = int(mask.sum())
        total += float(causal_lm_cross_entropy(logits, targets)) * count
        tokens += count
    return total / max(tokens, 1)


def unigram_cross_entropy(examples: LMExamples) -> float:
    """The cross-entropy of always predicting the training text's token frequencies, on the
    tokens `mean_cross_entropy` scores: what a model that learnt no context reaches."""
    ids, learnt = TokenRows.of(examples.input_ids), TokenRows.of(examples.learnt, dtype=np.bool_)
    counted = learnt.flat.copy()
    counted[ids.firsts()] = False  # a text's first token is predicted by nothing
    counts = np.bincount(ids.flat[counted].astype(np.int64))
    total = int(counts.sum())
    scored = [(ids[i][1:], learnt[i][1:]) for i in range(min(GUARD_TEXTS, len(ids)))]
    losses = [-math.log(int(counts[token]) / total) for ids, flags in scored for token, learnt in zip(ids, flags) if learnt]
    return sum(losses) / max(len(losses), 1)


def poor_student(student: torch.nn.Module, teacher: torch.nn.Module | None, examples: LMExamples, *,
                 vocabulary: int) -> str | None:
    """Why a distilled causal LM predicts its training text no better than token frequencies
    alone while its teacher does, or None."""
    from edgekd.training.distributed import is_sharded

    guess = unigram_cross_entropy(examples)
    student_loss = mean_cross_entropy(student, examples, vocabulary=vocabulary)
    if student_loss < guess or teacher is None or is_sharded(teacher):  # a sharded teacher runs on every rank only
        return None
    teacher_loss = mean_cross_entropy(teacher, examples, vocabulary=vocabulary)  # only when the student looks poor
    if teacher_loss >= guess:
        return None  # the teacher cannot do better on this text either: nothing to blame the student for
    return (f"its next-token loss on training text ({student_loss:.2f}) is no better than predicting token "
            f"frequencies alone ({guess:.2f}) while the teacher reaches {teacher_loss:.2f}")
