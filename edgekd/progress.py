"""Progress bars for long work (rich), silent when output is not for a person; and a
quiet terminal while native libraries run."""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, *, total: int, enabled: bool = True
                 ) -> Iterator[Callable[..., None]]:
    """Yield `advance(n, **fields)`; fields (loss, lr, ...) are shown after the bar."""
    if not enabled:
        yield lambda n=1, **fields: None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
               TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields) -> None:
            info = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in fields.items())
            progress.update(task, advance=n, **({"info": info} if fields else {}))

        yield advance


_library_output = {"shown": False}  # `edgekd --debug` shows what libraries print


def show_library_output(shown: bool) -> None:
    """Whether native libraries' own output reaches the terminal (`edgekd --debug`)."""
    _library_output["shown"] = shown


@contextmanager
def quiet_native_output() -> Iterator[None]:
    """Native code (ExecuTorch's C++ runtime logs `[cpuinfo_utils.cpp:...]` lines) writes to the
    process's stderr directly, past Python's warnings and logging: unless --debug, file
    descriptor 2 points at a scratch file for the block, which is then dropped."""
    if _library_output["shown"]:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)
