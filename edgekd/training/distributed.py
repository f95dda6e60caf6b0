"""Many processes: torchrun's environment -> process group, shards and rank-0-only writes.

`torchrun --nproc_per_node N [--nnodes M ...] -m edgekd distill ...` sets RANK,
WORLD_SIZE and LOCAL_RANK; without them everything here is a single-process no-op.
Every rank walks the same shuffled global batches and takes its own rows of each
(rows rank, rank + N, ...), so N processes see exactly the batches one process would.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import torch
import torch.distributed as dist

from edgekd.errors import UserError


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of one run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0  # the only rank that writes checkpoints, logs and the student

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def shard(self, rows: list[int]) -> list[int]:
        return rows[self.rank::self.world]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_token(self) -> str:
        """A random name chosen by rank 0 and shared by all (for shared temporary folders)."""
        token = [uuid.uuid4().hex[:12]]
        if self.distributed:
            dist.broadcast_object_list(token, src=0)
        return token[0]

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """`value` summed over the ranks (a NaN anywhere makes it NaN everywhere)."""
        if self.distributed:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def gather(self, value):
        """The list of every rank's `value` (picklable objects built by edgekd itself)."""
        if not self.distributed:
            return [value]
        gathered = [None] * self.world
        dist.all_gather_object(gathered, value)
        return gathered


def setup(device_name: str) -> tuple[Ranks, torch.device, bool]:
    """Join torchrun's process group when there is one; returns the ranks, this
    process's device, and whether this call started the group (and must end it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(), _device(device_name, local_rank=None), False
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(device_name, local_rank=local_rank)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Ranks(rank=rank, world=world, local_rank=local_rank), device, started


def _device(name: str, *, local_rank: int | None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; "
                        "use --device cpu or auto")
    if name == "cuda" and local_rank is not None:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def teardown(started: bool) -> None:
    if started and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """The module in DistributedDataParallel under torchrun; itself in a single process."""
    if not ranks.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def check_in_sync(module: torch.nn.Module, ranks: Ranks) -> None:
    """Raise unless every rank holds the same parameters (a cheap fingerprint per rank)."""
    if not ranks.distributed:
        return
    fingerprint = float(sum(p.detach().double().sum() + p.detach().double().abs().sum()
                            for p in module.parameters()))
    if len(set(ranks.gather(fingerprint))) != 1:
        raise UserError("the ranks' students drifted apart; report this with the torchrun command")
