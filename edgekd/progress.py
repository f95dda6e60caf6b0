"""Progress bars for long work (rich), silent when output is not for a person."""

from __future__ import annotations

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
