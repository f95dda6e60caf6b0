"""The training loop, one for every task: epochs (or a step budget), accumulation,
checkpoints, resume, DistributedDataParallel, a stop on a non-finite loss.

A task hands the loop a `Trainee`: what learns (the student, and a classifier's learned
projections), how global batches are made from example indices, what a micro-batch's loss
is a mean over (rows; a causal LM's predicted tokens) and the loss itself (which reads the
teacher's outputs from a cache or runs the teacher). The loop owns everything else:

    every epoch   the examples in a new order (seed + epoch), cut into global batches
    every step    this rank's rows of the batch, in `gradient_accumulation` micro-batches,
                  each weighted by its share of the batch's units, so the summed gradient is
                  that of the whole batch's mean loss on any number of ranks; AdamW with
                  linear warm-up and decay; gradients clipped to `max_grad_norm`
    every epoch   validation (when the task gives one): the best epoch's student is kept
    checkpoints   every `checkpoint_every` steps and at epoch ends (edgekd/training/checkpoint.py):
                  `resume` continues mid-epoch and, on CPU, ends with exactly the student an
                  uninterrupted run makes
"""

from __future__ import annotations

import array
import contextlib
import copy
import functools
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from edgekd.training import checkpoint, distributed
from edgekd.training.distributed import Ranks
from edgekd.training.dropout import training_masks
from edgekd.errors import UserError
from edgekd.progress import console, progress_bar


def check_first_batch(models: dict[str, torch.nn.Module | None],
                      run: Callable[[str, torch.nn.Module, torch.device], object]) -> None:
    """`run(role, model, its device)` once for each of teacher and student (None: absent) before any
    work: a model whose own code fails on the task's inputs (a layout model without its boxes, a
    hybrid cut to no attention layer) is refused in one line naming its class, not met as a
    traceback after the teacher cache."""
    from edgekd.errors import first_line

    for role, model in models.items():
        if model is None:
            continue
        was_training = model.training
        model.eval()  # no dropout: the check draws nothing from the training's random stream
        try:
            with torch.no_grad():
                run(role, model, next(model.parameters()).device)
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - any architecture's own failure
            fix = ("choose other --student-layers or --student-config values, or give the student with --student"
                   if role == "student" else "edgekd cannot distil this architecture as it is")
            raise UserError(f"the {role} ({type(model).__name__}) fails on its first batch "
                            f"({first_line(error)[:160]}); {fix}") from error
        finally:
            model.train(was_training)


@dataclass
class Trainee:
    """What a task gives the loop."""

    task: str  # recorded in checkpoints: a run resumes only a checkpoint of its own task
    module: torch.nn.Module  # everything that learns: one optimiser, one DDP wrapper, one checkpoint
    student: torch.nn.Module  # what is validated and kept (inside `module`, or `module` itself)
    examples: int  # training examples
    collate: Callable[[list[int]], dict]  # example indices -> a batch of tensors (with "index")
    units: Callable[[dict], int]  # what a batch's loss is a mean over: its rows, or predicted tokens
    loss: Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]]  # (wrapped module, batch) -> mean, parts
    evaluate: Callable[[], dict] | None = None  # validation metrics of the student (None: no validation)
    autocast: bool = True  # bf16 autocast on CUDA
    unit: str = "samples"  # what `units` counts, as metrics.jsonl names its rate: samples, or a causal LM's tokens
    teacher_seconds: Callable[[], float] = lambda: 0.0  # spent writing the teacher cache so far


@dataclass
class Progress:
    """Where training stands; everything a checkpoint needs besides the tensors' owners."""

    step: int = 0
    epoch: int = 1
    batches_done: int = 0  # global batches of `epoch` already trained on
    units: int = 0  # loss units (rows or predicted tokens) trained on, over all ranks
    best_epoch: int = 0
    best_metrics: dict = field(default_factory=dict)
    best_state: dict | None = None
    records: list = field(default_factory=list)  # metrics.jsonl lines so far


def schedule(step: int, *, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then linear decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


@functools.lru_cache(maxsize=2)  # epoch 1's order is asked for twice (training_order, then the loop)
def epoch_order(examples: int, *, seed: int, epoch: int) -> array.array:
    """The order examples are taken in during `epoch` (1-based): 8 bytes an example (a list of
    two million Python ints would cost 70 MB), shuffled exactly as a list would be."""
    order = array.array("q", range(examples))
    random.Random(seed + epoch).shuffle(order)
    return order


def training_order(examples: int, config) -> np.ndarray:
    """The rows a run trains on, in the order its first epoch takes them: every row, or, for a
    --max-steps run ending inside its first epoch, the rows its steps use (the teacher need see
    no others). Teacher caches store their rows in this order, so that they are written as
    training reads them."""
    order = epoch_order(examples, seed=config.seed, epoch=1)
    if config.max_steps and config.max_steps * config.batch_size < examples:
        order = order[:config.max_steps * config.batch_size]
    return np.array(order, dtype=np.int64)


def resumable(folder: Path, *, config, task: str, examples: int, resumable_changes: set[str], resume: bool,
              overwrite: bool, ranks: Ranks) -> dict | None:
    """The checkpoint to continue from (with `resume`), after checking it is this task's, for
    this many examples, written with the same options but for `resumable_changes`."""

    def check(state: dict) -> None:
        if state.get("task") != task:
            raise UserError(f"the checkpoint in {folder} is not from a {task} run; resume it with the "
                            "command that wrote it, or pass --overwrite to start over")
        if state.get("examples") != examples:
            raise UserError(f"the checkpoint in {folder} was written for {state.get('examples')} training "
                            f"examples, not {examples}; resume with the same --data or pass --overwrite")

    return checkpoint.to_resume(folder, config=config, resumable_changes=resumable_changes, resume=resume,
                                overwrite=overwrite, ranks=ranks, check=check)


class Loop:
    """One training run's state and steps; `run` is the loop, top to bottom."""

    def __init__(self, trainee: Trainee, *, config, device: torch.device, ranks: Ranks, checkpoints: Path,
                 metrics_path: Path | None, show_progress: bool) -> None:
        self.trainee, self.config, self.device, self.ranks = trainee, config, device, ranks
        self.checkpoints, self.metrics_path, self.show_progress = checkpoints, metrics_path, show_progress
        self.accumulation = getattr(config, "gradient_accumulation", 1)
        self.compiled = getattr(config, "compile", False)
        self.steps_per_epoch = math.ceil(trainee.examples / config.batch_size)
        self.total_steps = config.max_steps or self.steps_per_epoch * config.epochs
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        warmup_steps = max(1, round(config.warmup_fraction * self.total_steps))
        trainee.module.to(device).train()
        model = distributed.wrap(trainee.module, ranks, device, fsdp=getattr(config, "fsdp", False))
        self.sharded = distributed.is_sharded(model)  # FSDP: `model` learns, `trainee.module` is its whole copy
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        # fused: one kernel over all parameters, several times faster on CPU than the
        # per-tensor loop (the embedding matrix alone is most of a small student).
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.lr, weight_decay=config.weight_decay,
                                           fused=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: schedule(step, total_steps=self.total_steps, warmup_steps=warmup_steps))
        self.model = torch.compile(model) if self.compiled else model
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                                       enabled=device.type == "cuda" and trainee.autocast)
        self.tensorboard = _tensorboard(metrics_path.parent / "tensorboard") if metrics_path else None
        self.prefetch = Prefetch(trainee.collate, pin=device.type == "cuda") if _prefetching(device) else None
        self.units_this_run = 0  # for rates: the units trained by this process's run (not before a resume)

    # -- the loop

    def run(self, saved: dict | None) -> tuple[Progress, float]:
        """Train to the end; returns the progress (best epoch's student loaded) and the
        seconds this process spent in training steps."""
        if saved:
            progress = self._restore(saved)
        else:
            progress = Progress()
            torch.manual_seed(self.config.seed + self.ranks.rank)  # each rank its own dropout masks
        for record in progress.records:
            self._write(record)
        training_seconds = 0.0
        while progress.epoch <= self.epochs:
            epoch_started = time.perf_counter()
            self._train_epoch(progress)
            training_seconds += time.perf_counter() - epoch_started
            self._end_epoch(progress, seconds=time.perf_counter() - epoch_started)
            if progress.step >= self.total_steps:
                break
        if self.prefetch is not None:
            self.prefetch.pool.shutdown(cancel_futures=True)
        self._unshard()
        distributed.check_in_sync(self.trainee.module, self.ranks)
        if progress.best_state is not None:
            self.trainee.student.load_state_dict(progress.best_state)
        return progress, training_seconds

    def _train_epoch(self, progress: Progress) -> None:
        """Train the rest of `progress.epoch`."""
        config, epoch = self.config, progress.epoch
        self.trainee.module.train()
        order = epoch_order(self.trainee.examples, seed=config.seed, epoch=epoch)
        skip = min(self.trainee.examples, progress.batches_done * config.batch_size)
        started, seen, units_before = time.perf_counter(), 0, self.units_this_run
        teacher_before = self.trainee.teacher_seconds()  # a cache written in the steps: not the student's time
        # the rows this epoch will train on: a --max-steps run ending inside it is not timed as a whole epoch
        total = min(self.trainee.examples, skip + (self.total_steps - progress.step) * config.batch_size)
        with progress_bar(f"epoch {epoch}/{self.epochs}", total=total, enabled=self.show_progress) as advance:
            advance(skip)
            for start in range(skip, len(order), config.batch_size):
                if progress.step >= self.total_steps:
                    break
                indices = order[start:start + config.batch_size].tolist()
                if self.prefetch is not None and progress.step + 1 < self.total_steps:  # made while this step runs
                    self.prefetch.ahead(order[start + config.batch_size:start + 2 * config.batch_size].tolist())
                loss, parts = self._step(indices, progress)
                progress.step += 1
                progress.batches_done += 1
                seen += len(indices)
                learning_rate = self.scheduler.get_last_lr()[0]
                elapsed = time.perf_counter() - started - (self.trainee.teacher_seconds() - teacher_before)
                rates = {"samples_per_second": round(seen / elapsed, 2)}  # of this epoch so far
                if self.trainee.unit != "samples":
                    rates[f"{self.trainee.unit}_per_second"] = round((self.units_this_run - units_before) / elapsed, 2)
                advance(len(indices), loss=loss, lr=learning_rate, samples_per_s=rates["samples_per_second"])
                self._record(progress, {"step": progress.step, "epoch": epoch, "loss": loss,
                                        "lr": learning_rate, **parts, **rates})
                if config.checkpoint_every and progress.step % config.checkpoint_every == 0:
                    self._save(progress)

    def _step(self, indices: list[int], progress: Progress) -> tuple[float, dict]:
        """One optimiser step over one global batch: this rank's rows, in micro-batches."""
        batch = self.prefetch.take(indices) if self.prefetch is not None else self.trainee.collate(indices)
        total_units = self.trainee.units(batch)  # the same on every rank: each holds the whole batch
        rows = self.ranks.shard(list(range(len(indices))))
        pieces = [piece.tolist() for piece in np.array_split(rows, self.accumulation)]
        loss_sum, parts_sum = torch.zeros((), device=self.device), {}
        for number, piece in enumerate(pieces):
            micro = {name: tensor[piece or [0]] for name, tensor in batch.items()}
            # Each micro-batch's loss is a mean over its units: weighted by its share of the
            # batch's, times the world size that DDP's mean divides out, the summed gradient
            # is that of the whole batch's mean loss (a rank without rows joins at weight 0).
            weight = (self.trainee.units(micro) if piece else 0) / max(total_units, 1) * self.ranks.world
            micro = {name: tensor.to(self.device, non_blocking=True) for name, tensor in micro.items()}
            last = number == len(pieces) - 1
            with distributed.gradient_sync(self.model, self.ranks, enabled=last):
                with self.autocast, training_masks(self.device, compiled=self.compiled):
                    loss, parts = self.trainee.loss(self.model, micro)
                (loss * weight).backward()
            loss_sum += loss.detach() * weight / self.ranks.world  # this rank's share of the mean
            for name, value in parts.items():
                parts_sum[name] = parts_sum.get(name, 0.0) + value * weight / self.ranks.world
        loss_sum = self.ranks.sum(loss_sum)  # a NaN or inf on any rank shows up on all
        if not torch.isfinite(loss_sum):
            self.optimizer.zero_grad(set_to_none=True)
            raise UserError(checkpoint.non_finite_message(self.checkpoints, float(loss_sum),
                                                          step=progress.step + 1))
        torch.nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        progress.units += total_units
        self.units_this_run += total_units
        return float(loss_sum), parts_sum

    def _end_epoch(self, progress: Progress, *, seconds: float) -> None:
        """Validate, keep the best student, log, checkpoint at the epoch boundary."""
        self._unshard()
        metrics = self.trainee.evaluate() if self.ranks.is_main and self.trainee.evaluate else {}
        self._record(progress, {"epoch": progress.epoch, "step": progress.step, "validation": metrics,
                                "seconds": seconds})
        if self.show_progress and metrics:
            console.print(f"  epoch {progress.epoch}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if self.ranks.is_main and (not progress.best_epoch or not metrics
                                   or _score(metrics) > _score(progress.best_metrics)):
            progress.best_epoch, progress.best_metrics = progress.epoch, metrics
            # without validation the last epoch is the one kept: no copy of the weights needed
            progress.best_state = copy.deepcopy(
                {k: v.detach().cpu() for k, v in self.trainee.student.state_dict().items()}) if metrics else None
        progress.epoch += 1
        progress.batches_done = 0
        if self.config.checkpoint_every:
            self._save(progress)

    # -- checkpoints

    def _unshard(self) -> None:
        """Under FSDP, the whole copy given the shards' parameters before it is validated,
        checkpointed or saved."""
        if self.sharded:
            distributed.unsharded(self.model, self.trainee.module)

    def _save(self, progress: Progress) -> None:
        rng = self.ranks.gather(checkpoint.rng_state(self.device))  # every rank's random stream
        self._unshard()
        optimizer = distributed.optimizer_state(self.model, self.optimizer)  # every rank: FSDP gathers it
        if not self.ranks.is_main:
            return
        checkpoint.save(self.checkpoints, {
            "task": self.trainee.task, "examples": self.trainee.examples,
            "step": progress.step, "epoch": progress.epoch, "batches_done": progress.batches_done,
            "units": progress.units,
            "trainee": {k: v.detach().cpu() for k, v in self.trainee.module.state_dict().items()},
            "optimizer": optimizer, "scheduler": self.scheduler.state_dict(),
            "rng": rng, "config": asdict(self.config), "records": progress.records,
            "best": {"epoch": progress.best_epoch, "metrics": progress.best_metrics,
                     "state": progress.best_state}})

    def _restore(self, saved: dict) -> Progress:
        distributed.load_state(self.model, self.trainee.module, self.optimizer, module_state=saved["trainee"],
                               optimizer_state=saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        rng = saved["rng"]
        checkpoint.restore_rng(rng[self.ranks.rank % len(rng)], self.device)
        best = saved["best"]
        progress = Progress(step=saved["step"], epoch=saved["epoch"], batches_done=saved["batches_done"],
                            units=saved["units"], best_epoch=best["epoch"], best_metrics=best["metrics"],
                            best_state=best["state"], records=list(saved["records"]))
        if self.show_progress:
            console.print(f"resuming from step {progress.step} (epoch {progress.epoch}, "
                          f"batch {progress.batches_done}) of {self.checkpoints}")
        return progress

    # -- logs

    def _record(self, progress: Progress, record: dict) -> None:
        if not self.ranks.is_main:
            return
        progress.records.append(record)
        self._write(record)

    def _write(self, record: dict) -> None:
        if self.metrics_path is None:
            return
        with self.metrics_path.open("a") as handle:  # a long run can be followed with tail -f
            handle.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            values = record.get("validation", record)
            for name, value in values.items():
                if isinstance(value, float) and name not in ("epoch", "step"):
                    self.tensorboard.add_scalar(name, value, record["step"])


def _prefetching(device: torch.device) -> bool:
    """On a GPU the next batch is made (tokenised, decoded) in a thread while this one trains, in
    pinned memory, and copied without blocking; on the CPU the cores are the model's."""
    return device.type == "cuda"


class Prefetch:
    """Batches made in a background thread ahead of their step (`ahead`) and handed over when
    it comes (`take`; a batch not made ahead is made then): the same batches, in the same
    order, as making each when it is needed."""

    def __init__(self, collate: Callable[[list[int]], dict], *, pin: bool) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.collate, self.pin = collate, pin
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgekd-batches")
        self.pending: dict[tuple[int, ...], object] = {}

    def _make(self, indices: list[int]) -> dict:
        batch = self.collate(indices)
        return {name: tensor.pin_memory() for name, tensor in batch.items()} if self.pin else batch

    def ahead(self, indices: list[int]) -> None:
        if indices and tuple(indices) not in self.pending:
            self.pending[tuple(indices)] = self.pool.submit(self._make, list(indices))

    def take(self, indices: list[int]) -> dict:
        made = self.pending.pop(tuple(indices), None)
        return made.result() if made is not None else self._make(indices)


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


# ---------------------------------------------------------------------------- the stage around it

@dataclass(frozen=True)
class Trained:
    """What `train` did."""

    out: Path | None  # the student's folder; None on the ranks other than 0 (rank 0 writes)
    progress: Progress
    seconds: float  # spent in training steps, less the time the teacher cache was written in them
    units_per_second: float  # loss units (rows or predicted tokens) per second of those steps
    prepare_seconds: float  # building or opening teacher caches (those written in the steps too)


def train(*, task: str, config, out: Path, examples: int, prepare: Callable[..., Trainee],
          save: Callable[[Path, float], None], resumable_changes: set[str], overwrite: bool = False,
          resume: bool = False, show_progress: bool = True, teacher: torch.nn.Module | None = None) -> Trained:
    """Run the loop for one task: `prepare(device=, ranks=, show_progress=)` makes the Trainee
    (teacher caches are built there, inside the atomic output folder), `save(folder, seconds)`
    writes the student. Under torchrun every rank calls this; rank 0 alone writes. With
    `config.fsdp` under torchrun, `teacher` is sharded across the ranks (in place) before
    `prepare`, and every rank then runs it together."""
    from edgekd.cpu_memory import reuse_freed_memory
    from edgekd.errors import atomic_dir

    reuse_freed_memory()  # each step's large gradient buffers reuse the last step's pages
    ranks, device, started = distributed.setup(config.device)
    try:
        show_progress = show_progress and ranks.is_main
        if getattr(config, "fsdp", False) and ranks.distributed and teacher is not None:
            distributed.shard(teacher.to(device))
        elif getattr(config, "fsdp", False) and not ranks.distributed and show_progress:
            console.print("--fsdp: one process, nothing to shard (start it with torchrun --nproc_per_node N)")
        torch.manual_seed(config.seed)  # projections and random students start the same on every rank
        out = Path(out)
        checkpoints = checkpoint.checkpoint_dir(out)  # beside `out`: the atomic write of the student spares it
        saved = resumable(checkpoints, config=config, task=task, examples=examples,
                          resumable_changes=resumable_changes, resume=resume, overwrite=overwrite, ranks=ranks)
        output = atomic_dir(out, overwrite=overwrite) if ranks.is_main else contextlib.nullcontext(None)
        with output as staging:
            prepare_started = time.perf_counter()
            trainee = prepare(device=device, ranks=ranks, show_progress=show_progress)
            prepare_seconds = time.perf_counter() - prepare_started
            loop = Loop(trainee, config=config, device=device, ranks=ranks, checkpoints=checkpoints,
                        metrics_path=staging / "metrics.jsonl" if staging else None, show_progress=show_progress)
            teacher_before = trainee.teacher_seconds()
            progress, seconds = loop.run(saved)
            # a cache written as training reads it: its time is the teacher's, not the student's steps'
            teacher_in_steps = trainee.teacher_seconds() - teacher_before
            seconds, prepare_seconds = seconds - teacher_in_steps, prepare_seconds + teacher_in_steps
            trainee.module.cpu()
            if staging is not None:
                save(staging, seconds)
        ranks.barrier()
        if ranks.is_main:
            checkpoint.remove(checkpoints)  # the run finished: its student replaces the checkpoints
        return Trained(out=out if ranks.is_main else None, progress=progress, seconds=seconds,
                       units_per_second=loop.units_this_run / seconds if seconds else 0.0,
                       prepare_seconds=prepare_seconds)
    finally:
        distributed.teardown(started)
