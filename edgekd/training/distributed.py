"""Many processes: torchrun's environment -> process group, shards and rank-0-only writes.

`torchrun --nproc_per_node N [--nnodes M ...] -m edgekd distill ...` sets RANK,
WORLD_SIZE and LOCAL_RANK; without them everything here is a single-process no-op.
Every rank walks the same shuffled global batches and takes its own rows of each
(rows rank, rank + N, ...), so N processes see exactly the batches one process would.

The student learns under DistributedDataParallel (each rank a whole copy), or with --fsdp
under PyTorch's FSDP2 (`fully_shard`: each rank holds 1/N of every block's parameters,
gradients and optimiser state, gathered block by block as they are used); the teacher is
then sharded the same way, so a teacher no device can hold runs across all of them.
"""

from __future__ import annotations

import contextlib
import copy
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


def wrap(module: torch.nn.Module, ranks: Ranks, device: torch.device, *, fsdp: bool = False) -> torch.nn.Module:
    """What learns under torchrun: the module in DistributedDataParallel, or (`fsdp`) a sharded
    copy of it, while `module` itself stays whole, to be validated and saved (`unsharded`
    brings the copy's parameters back into it); the module itself in a single process."""
    if not ranks.distributed:
        return module
    if fsdp:
        return shard(copy.deepcopy(module))
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def shard(module: torch.nn.Module) -> torch.nn.Module:
    """`module` under FSDP2, in place: each outermost block with parameters of its layer lists
    (transformer layers, stages) sharded on its own, then the rest (embeddings, heads) as one."""
    from torch.distributed.fsdp import fully_shard

    blocks: list[str] = []
    for name, child in module.named_modules():
        inside = any(name.startswith(f"{block}.") for block in blocks)
        if not inside and isinstance(child, torch.nn.ModuleList):
            blocks += [f"{name}.{index}" if name else str(index) for index, block in enumerate(child)
                       if any(True for _ in block.parameters())]
    for block in blocks:
        fully_shard(module.get_submodule(block))
    fully_shard(module)
    return module


def is_sharded(module: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def unsharded(sharded: torch.nn.Module, whole: torch.nn.Module) -> None:
    """Every rank: the sharded module's parameters and buffers, gathered, loaded into `whole`."""
    from torch.distributed.tensor import DTensor

    state = {name: value.full_tensor() if isinstance(value, DTensor) else value
             for name, value in sharded.state_dict().items()}
    whole.load_state_dict(state)


def gradient_sync(model: torch.nn.Module, ranks: Ranks, *, enabled: bool):
    """Around one backward: gradients reduced across the ranks only when `enabled` (the last
    micro-batch of a step); the others accumulate locally."""
    if not ranks.distributed:
        return contextlib.nullcontext()
    if is_sharded(model):
        model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()
    return contextlib.nullcontext() if enabled else model.no_sync()


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Every rank: the optimiser's state, whole (on rank 0; under FSDP gathered from the shards)."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_state(model: torch.nn.Module, whole: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
               module_state: dict, optimizer_state: dict) -> None:
    """Every rank: a checkpoint's whole states into `whole`, and under FSDP into the shards too."""
    whole.load_state_dict(module_state)
    if not is_sharded(model):
        optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, module_state, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


def check_in_sync(module: torch.nn.Module, ranks: Ranks) -> None:
    """Raise unless every rank holds the same parameters (a cheap fingerprint per rank; under
    FSDP, of the whole module each rank gathered)."""
    if not ranks.distributed:
        return
    fingerprint = float(sum(p.detach().double().sum() + p.detach().double().abs().sum()
                            for p in module.parameters()))
    if len(set(ranks.gather(fingerprint))) != 1:
        raise UserError("the ranks' students drifted apart; report this with the torchrun command")
