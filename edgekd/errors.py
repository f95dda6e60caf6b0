"""Errors a user can act on.

Stage functions raise `UserError` with one line that says what was wrong and what to
do; the CLI prints that line and exits non-zero without a traceback (unless --debug).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class UserError(Exception):
    """A problem with the user's input, reported as one actionable line."""

    exit_code = 1


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, for one-line errors (its type if empty)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class GateFailed(UserError):
    """A bench gate (accuracy drop, latency, size) failed: exit code 2 for CI jobs."""

    exit_code = 2


@contextmanager
def atomic_dir(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; rename it to `final` only on success.

    A crash or an error leaves no half-written `final` behind, and an existing `final`
    is only replaced once the new one is complete.
    """
    final = Path(final)
    if final.exists() and not overwrite and any(final.iterdir()):
        raise UserError(f"output folder {final} already exists and is not empty; "
                        "choose another --out or pass --overwrite")
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(final)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-{os.getpid()}-", dir=parent))
    except OSError as error:
        raise UserError(f"cannot write to {parent}: {error.strerror}; "
                        "choose a writable --out") from error
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes owner-only folders; outputs are ordinary folders
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _plain_permissions(staging)
    if final.exists():
        trash = parent / f".{final.name}.old-{os.getpid()}"
        final.rename(trash)
        staging.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        staging.rename(final)


def _plain_permissions(folder: Path) -> None:
    """Files as a plain write would leave them (0666 less the umask): some writers (the
    safetensors files of save_pretrained) create theirs owner-only."""
    mode = 0o666 & ~_umask()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)


def sweep_stale(final: Path) -> None:
    """Clean up after a process that was killed inside `atomic_dir` for `final`.

    Its staging folder (`.NAME.partial-PID-*`) is deleted; if it died between moving the
    old `final` aside (`.NAME.old-PID`) and moving the new one in, the old one is put back.
    Folders of processes that are still running are left alone.
    """
    for leftover in sorted(final.parent.glob(f".{final.name}.*-*")):
        kind, _, rest = leftover.name[len(final.name) + 2:].partition("-")
        pid = rest.split("-")[0]
        if kind not in ("partial", "old") or not pid.isdigit() or _alive(int(pid)):
            continue
        if kind == "old" and not final.exists():
            leftover.rename(final)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file under a temporary name, then rename it into place."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text)
    temporary.replace(path)
