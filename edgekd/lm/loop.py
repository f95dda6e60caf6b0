"""The causal-LM training loop: a fixed budget of steps, checkpoints, resume, many processes.

Every step takes the next global batch of a stream that reshuffles the texts each epoch.
Under torchrun (edgekd/distill/distributed.py) each rank trains on its rows of that batch
and DistributedDataParallel averages the gradients. Checkpoints have the encoder loop's
format (edgekd/distill/checkpoint.py): one file beside the output folder, written
atomically by rank 0, holding the student, optimiser, step, stream position, every rank's
RNG state, the metrics so far and the config. A run resumed from one ends, on CPU, with
exactly the student an uninterrupted run makes.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from edgekd.distill import checkpoint, distributed
from edgekd.distill.distributed import Ranks
from edgekd.distill.dropout import training_masks
from edgekd.errors import UserError
from edgekd.lm.cache import TopKCache
from edgekd.lm.data import LMExamples, collate
from edgekd.lm.losses import (causal_lm_cross_entropy, distillation_loss, shift_for_next_token,
                              sparse_distillation_loss)
from edgekd.progress import console, progress_bar

if TYPE_CHECKING:
    from edgekd.lm.train import LMDistillConfig

# Settings a checkpoint may be resumed under although they differ from the original run:
# they change where the run goes and how often it saves, not what it computes.
RESUMABLE_CHANGES = {"device", "checkpoint_every"}


def learning_rate(step: int, *, total: int, peak: float, warmup_fraction: float) -> float:
    """Linear warm-up to `peak`, then linear decay to 0."""
    warmup = max(1, int(total * warmup_fraction))
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def step_loss(student: torch.nn.Module, batch: dict, *, teacher: torch.nn.Module | None,
              cache: TopKCache | None, vocabulary: int, config: LMDistillConfig) -> torch.Tensor:
    """w * next-token CE + (1 - w) * divergence from the teacher (w: the hard-label weight)."""
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


@dataclass
class BatchStream:
    """Global batches for ever: each epoch the texts in a new order (seed + epoch), cut
    into batches. `epoch` and `batch` say which batch comes next, so a checkpoint holds them."""

    texts: int
    batch_size: int
    seed: int
    epoch: int = 0
    batch: int = 0  # batches of `epoch` already taken
    _order: tuple[int, list[int]] = field(default=(-1, []), repr=False, compare=False)  # (epoch, its order)

    def next(self) -> list[int]:
        if self._order[0] != self.epoch:
            order = list(range(self.texts))
            random.Random(self.seed + self.epoch).shuffle(order)
            self._order = (self.epoch, order)
        start = self.batch * self.batch_size
        indices = self._order[1][start:start + self.batch_size]
        self.epoch, self.batch = ((self.epoch + 1, 0) if start + self.batch_size >= self.texts
                                  else (self.epoch, self.batch + 1))
        return indices

    def position(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "texts": self.texts}


@dataclass
class LMProgress:
    """Where training stands, besides the tensors' owners."""

    step: int = 0
    tokens: int = 0  # predicted tokens trained on, over all ranks
    records: list = field(default_factory=list)  # metrics.jsonl lines so far


def saved_state(folder: Path, *, config: LMDistillConfig, texts: int, resume: bool, overwrite: bool,
                ranks: Ranks) -> dict | None:
    """The checkpoint to continue from (with `resume`), after checking it fits this run."""
    return checkpoint.to_resume(folder, config=config, resumable_changes=RESUMABLE_CHANGES,
                                resume=resume, overwrite=overwrite, ranks=ranks,
                                check=lambda state: _check_fits(state, texts=texts, folder=folder))


def _check_fits(state: dict, *, texts: int, folder: Path) -> None:
    if "student" not in state or "stream" not in state:
        raise UserError(f"the checkpoint in {folder} is not from a causal-LM run; resume it with the "
                        "command that wrote it, or pass --overwrite to start over")
    if state["stream"]["texts"] != texts:
        raise UserError(f"the checkpoint in {folder} was written for {state['stream']['texts']} training "
                        f"texts, not {texts}; resume with the same --data or pass --overwrite")


class LMLoop:
    """One causal-LM training run's state and steps; `run` is the loop, top to bottom."""

    def __init__(self, student: torch.nn.Module, *, teacher: torch.nn.Module | None, cache: TopKCache | None,
                 train: LMExamples, config: LMDistillConfig, vocabulary: int, device: torch.device,
                 ranks: Ranks, checkpoints: Path, metrics_path: Path | None, show_progress: bool) -> None:
        self.student, self.teacher, self.cache, self.train = student, teacher, cache, train
        self.config, self.vocabulary, self.device, self.ranks = config, vocabulary, device, ranks
        self.checkpoints, self.metrics_path, self.show_progress = checkpoints, metrics_path, show_progress
        student.to(device).train()
        if not config.train_embeddings:
            student.get_input_embeddings().weight.requires_grad_(False)
            student.get_output_embeddings().weight.requires_grad_(False)
        self.trainable = [p for p in student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=config.lr, weight_decay=config.weight_decay)
        self.model = distributed.wrap(student, self.ranks, self.device)
        self.stream = BatchStream(len(train), config.batch_size, config.seed)
        self.total_steps = config.total_steps(len(train))
        # bf16 autocast on CUDA only: on a CPU fp32 is faster
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and config.bf16
                         else contextlib.nullcontext())

    # -- the loop

    def run(self, saved: dict | None) -> tuple[LMProgress, float]:
        """Train to `total_steps`; returns the progress and the seconds this process trained."""
        if saved:
            progress = self._restore(saved)
        else:
            progress = LMProgress()
            torch.manual_seed(self.config.seed + self.ranks.rank)  # each rank its own dropout masks
        for record in progress.records:
            self._write(record)
        started, every = time.perf_counter(), self.config.checkpoint_every
        with progress_bar("distill", total=self.total_steps, enabled=self.show_progress) as advance:
            advance(progress.step)
            while progress.step < self.total_steps:
                loss, lr, tokens = self._step(progress)
                progress.step += 1
                progress.tokens += tokens
                self._record(progress, {"step": progress.step, "loss": loss, "lr": lr})
                advance(1, loss=loss)
                if every and progress.step % every == 0:
                    self._save(progress)
        distributed.check_in_sync(self.student, self.ranks)
        return progress, time.perf_counter() - started

    def _step(self, progress: LMProgress) -> tuple[float, float, int]:
        """One optimiser step on the next global batch; returns its loss, learning rate and
        predicted tokens (over all ranks)."""
        indices = self.stream.next()
        rows = self.ranks.shard(indices)
        batch = collate(self.train, rows or indices[:1])  # a rank without rows still joins, at weight 0
        local_tokens = int((batch["labels"][:, 1:] != -100).sum()) if rows else 0
        tokens = int(self.ranks.sum(torch.tensor(local_tokens, device=self.device)))
        # The loss is a mean over this rank's tokens: weighted by its share of the batch's
        # tokens, times the world size that DDP's mean divides out, the summed gradient is
        # the gradient of the mean over all the batch's tokens (weight 1 in one process).
        weight = local_tokens / max(tokens, 1) * self.ranks.world
        lr = learning_rate(progress.step, total=self.total_steps, peak=self.config.lr,
                           warmup_fraction=self.config.warmup_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        device_batch = {name: tensor.to(self.device) for name, tensor in batch.items()}
        with self.autocast, training_masks(self.device):
            loss = step_loss(self.model, device_batch, teacher=self.teacher, cache=self.cache,
                             vocabulary=self.vocabulary, config=self.config)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * weight).backward()
        batch_loss = self.ranks.sum(loss.detach() * weight / self.ranks.world)  # NaN anywhere: everywhere
        if not torch.isfinite(batch_loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise UserError(checkpoint.non_finite_message(self.checkpoints, float(batch_loss),
                                                          step=progress.step + 1))
        torch.nn.utils.clip_grad_norm_(self.trainable, self.config.max_grad_norm)
        self.optimizer.step()
        return float(batch_loss), lr, tokens

    # -- checkpoints

    def _save(self, progress: LMProgress) -> None:
        rng = self.ranks.gather(checkpoint.rng_state(self.device))  # every rank's random stream
        if not self.ranks.is_main:
            return
        checkpoint.save(self.checkpoints, {
            "step": progress.step, "tokens": progress.tokens, "stream": self.stream.position(),
            "student": {k: v.detach().cpu() for k, v in self.student.state_dict().items()},
            "optimizer": self.optimizer.state_dict(), "rng": rng,
            "config": asdict(self.config), "records": progress.records})

    def _restore(self, saved: dict) -> LMProgress:
        self.student.load_state_dict(saved["student"])
        self.optimizer.load_state_dict(saved["optimizer"])
        rng = saved["rng"]
        checkpoint.restore_rng(rng[self.ranks.rank % len(rng)], self.device)
        self.stream.epoch, self.stream.batch = saved["stream"]["epoch"], saved["stream"]["batch"]
        progress = LMProgress(step=saved["step"], tokens=saved["tokens"], records=list(saved["records"]))
        if self.show_progress:
            console.print(f"resuming from step {progress.step} of {self.checkpoints}")
        return progress

    # -- logs

    def _record(self, progress: LMProgress, record: dict) -> None:
        if not self.ranks.is_main:
            return
        progress.records.append(record)
        self._write(record)

    def _write(self, record: dict) -> None:
        if self.metrics_path is None:
            return
        with self.metrics_path.open("a") as handle:  # a long run can be followed with tail -f
            handle.write(json.dumps(record) + "\n")
