"""Training checkpoints: written atomically, read without unpickling code.

One file, `<out>.checkpoints/checkpoint.pt`, always the latest good state: model and
projections, optimiser, scheduler, RNG states, position in the data, the best epoch's
weights and the metrics so far. It is written under a temporary name and renamed, so a
process killed mid-write leaves the previous checkpoint intact; it is loaded with
`weights_only=True`, so a tampered file cannot run code.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, fields
from pathlib import Path
from typing import Callable

import torch

from edgekd.training.distributed import Ranks
from edgekd.errors import UserError, temporary_name
from edgekd.progress import console

FILE_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def checkpoint_dir(out: Path) -> Path:
    """Beside the output folder, so the atomic write of the student never touches it."""
    out = Path(out)
    return out.parent / f"{out.name}.checkpoints"


def save(folder: Path, state: dict) -> Path:
    """Write `state` as the latest checkpoint in `folder`, atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / FILE_NAME
    temporary = temporary_name(final)
    torch.save({"format": FORMAT_VERSION, **state}, temporary)
    with temporary.open("rb") as handle:  # the data must be on disk before the rename
        os.fsync(handle.fileno())
    temporary.replace(final)
    return final


def load(folder: Path) -> dict | None:
    """The latest checkpoint in `folder`, or None when there is none."""
    path = Path(folder) / FILE_NAME
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any failure to unpickle or unzip means the file is damaged
        raise UserError(f"checkpoint {path} is corrupt or unreadable ({type(error).__name__}); "
                        f"delete {path.parent} to start over, or rerun with --overwrite") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or "step" not in state:
        raise UserError(f"checkpoint {path} is not an edgekd checkpoint of format {FORMAT_VERSION}; "
                        f"delete {path.parent} to start over, or rerun with --overwrite")
    return state


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def to_resume(folder: Path, *, config, resumable_changes: set[str], resume: bool, overwrite: bool,
              ranks: Ranks, check: Callable[[dict], None] | None = None) -> dict | None:
    """The checkpoint to continue from (with --resume), written with the options of `config`
    but for `resumable_changes`, after the caller's own `check` of what it holds. Without
    --resume a leftover checkpoint of an unfinished run is refused, or removed with --overwrite."""
    if not resume:
        if (folder / FILE_NAME).exists():
            if not overwrite:
                raise UserError(f"{folder} holds a checkpoint of an unfinished run; pass --resume "
                                "to continue it or --overwrite to start over")
            ranks.barrier()
            if ranks.is_main:
                remove(folder)
        return None
    state = load(folder)  # a damaged file is a one-line UserError
    if state is None:
        if ranks.is_main:
            console.print(f"no checkpoint in {folder}: starting from step 0")
        return None
    if check is not None:
        check(state)
    saved_config = state.get("config", {})
    defaults = {field.name: field.default for field in fields(config)}  # options newer than the checkpoint
    changed = sorted(k for k, v in asdict(config).items()
                     if k not in resumable_changes and saved_config.get(k, defaults[k]) != v)
    if changed:
        first = changed[0]
        raise UserError(f"the checkpoint in {folder} was written with {first}={saved_config.get(first)!r}, "
                        f"not {getattr(config, first)!r}; resume with the same options or pass --overwrite")
    return state


def non_finite_message(folder: Path, loss: float, *, step: int) -> str:
    """What to tell a user whose loss stopped being finite at `step` (1-based)."""
    where = (f"the last good checkpoint is kept in {folder}; lower --lr and rerun with --resume"
             if (folder / FILE_NAME).exists() else "no checkpoint was written yet; lower --lr or check the data")
    return f"the loss became {loss} at step {step}; {where}"
