"""Progress bars for long work (rich), silent when output is not for a person; and a
quiet terminal while native libraries run."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, *, total: int, enabled: bool = True
                 ) -> Iterator[Callable[..., None]]:
    """Yield `advance(n, **fields)`; fields (loss, lr, ...) are shown after the bar. When stderr
    is not a terminal (CI, nohup, a job scheduler) a bar cannot redraw: a plain line with the
    count, the rate and the time left is printed every LOG_EVERY seconds and at the end."""
    if not enabled:
        yield lambda n=1, **fields: None
        return
    if not console.is_terminal:
        with plain_progress(description, total=total) as advance:
            yield advance
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


LOG_EVERY = 10.0  # seconds between plain progress lines in a log


@contextmanager
def plain_progress(description: str, *, total: int, clock: Callable[[], float] = time.monotonic,
                   write: Callable[[str], None] | None = None) -> Iterator[Callable[..., None]]:
    """Progress as log lines: `description: done/total (percent), rate/s, ETA, fields`."""
    write = write or (lambda line: print(line, file=sys.stderr, flush=True))
    started = last = clock()
    state = {"done": 0, "fields": ""}

    def line() -> str:
        elapsed = max(clock() - started, 1e-9)
        rate = state["done"] / elapsed
        left = (total - state["done"]) / rate if rate > 0 and total else float("nan")
        eta = "" if left != left else f", ETA {_duration(left)}"
        share = f" ({100 * state['done'] / total:.0f}%)" if total else ""
        fields = f"  {state['fields']}" if state["fields"] else ""
        return (f"{description}: {state['done']}/{total}{share}, {rate:,.1f}/s{eta}, "
                f"{_duration(elapsed)} elapsed{fields}")

    def advance(n: int = 1, **fields) -> None:
        nonlocal last
        state["done"] += n
        if fields:
            state["fields"] = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in fields.items())
        if clock() - last >= LOG_EVERY:
            last = clock()
            write(line())

    yield advance
    write(line())


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


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


def silence_libraries() -> None:
    """Keep the terminal for edgekd's own progress: silence library chatter and their bars
    (for the rest of the process: the command line's choice; the API uses `libraries_quiet`)."""
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    # onnxruntime.quantization logs warnings on the root logger, and imports may reconfigure
    # its level: edgekd itself never logs, so library records below ERROR are dropped at the source
    logging.disable(logging.WARNING)
    # torchao (pulled in by executorch, imported by transformers) warns through torch's own logger
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"torch\.onnx.*")
    warnings.filterwarnings("ignore", module=r"transformers.*")
    for category in (UserWarning, FutureWarning, DeprecationWarning):  # torch.export, torchao, ExecuTorch
        warnings.filterwarnings("ignore", category=category)
    try:
        from torch.jit import TracerWarning

        warnings.filterwarnings("ignore", category=TracerWarning)
    except ImportError:
        pass


@contextmanager
def libraries_quiet() -> Iterator[None]:
    """`silence_libraries` for one call of the Python API, with the caller's settings restored
    after it (warnings filters, logging, transformers' verbosity and bars)."""
    if _library_output["shown"]:
        yield
        return
    import logging
    import warnings

    from transformers.utils import logging as transformers_logging

    disabled, verbosity = logging.root.manager.disable, transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    pytree = logging.getLogger("torch.utils._pytree")
    pytree_level = pytree.level
    with warnings.catch_warnings():
        silence_libraries()
        try:
            yield
        finally:
            logging.disable(disabled)
            pytree.setLevel(pytree_level)
            transformers_logging.set_verbosity(verbosity)
            (transformers_logging.enable_progress_bar if bars else transformers_logging.disable_progress_bar)()
