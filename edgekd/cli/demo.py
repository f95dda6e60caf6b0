"""`edgekd demo`: the whole pipeline on the embedded default, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgekd.cli.app import app, user_errors


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Folder for student, artifacts and report."),
    cache_dir: Optional[Path] = typer.Option(
        None, help="Where the built teacher is cached (default $EDGEKD_CACHE or ~/.cache/edgekd)."),
    limit: Optional[int] = typer.Option(
        None, help="Use at most this many articles per split (a quick run)."),
    max_length: int = typer.Option(128, help="Tokens per article."),
    epochs: int = typer.Option(2, help="Student epochs."),
    repeats: int = typer.Option(50, help="Interleaved latency repeats per model."),
    quiet: bool = typer.Option(False, help="No progress bars."),
):
    """The whole pipeline offline on the embedded default: MiniLM-L6 teacher fine-tuned on
    BBC News (built once, cached) -> 2-layer student -> ONNX fp32 + int8 -> report.

    Example:

        edgekd demo --out runs/demo
    """
    from edgekd.demo import run_demo

    run_demo(out=out, cache=cache_dir, limit=limit, max_length=max_length, epochs=epochs,
             repeats=repeats, show_progress=not quiet)
