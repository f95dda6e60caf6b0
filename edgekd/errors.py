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
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=parent))
    except OSError as error:
        raise UserError(f"cannot write to {parent}: {error.strerror}; "
                        "choose a writable --out") from error
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():
        trash = parent / f".{final.name}.old-{os.getpid()}"
        final.rename(trash)
        staging.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        staging.rename(final)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file under a temporary name, then rename it into place."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text)
    temporary.replace(path)
