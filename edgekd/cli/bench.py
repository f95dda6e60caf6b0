"""`edgekd bench`: the options, parsed and handed to `edgekd.bench`, which measures teacher,
student and artifacts on the same data, writes the report (one schema, docs/report-schema.md)
and checks the gates; a failed gate still writes the report, then exits with code 2."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import List, Optional

import typer

from edgekd.cli.app import app, user_errors
from edgekd.cli.options import CAUSAL_LM, CLASSIFIERS, IMAGE_CLASSIFICATION, TEXT_CLASSIFICATION, default_help, given_options

_help = functools.partial(default_help, "bench")


@app.command()
@user_errors
def bench(
    ctx: typer.Context,
    teacher: str = typer.Option(
        ..., help="Teacher folder or hub id (the reference; a causal LM may be a .gguf file)."),
    data: Path = typer.Option(
        ..., help="Evaluation data (a file, a saved dataset or a hub id, as for distill; images: also a folder "
                  "of class folders): labelled for classifiers; held-out text for causal LMs."),
    split: Optional[str] = typer.Option(None, help="Split of a --data dataset (default: test)."),
    student: Optional[Path] = typer.Option(None, help="Student folder (PyTorch) to include."),
    artifacts: Optional[List[Path]] = typer.Option(
        None, help="Output folder of edgekd export; repeatable (artifacts exported from the "
                   "teacher itself are reported as teacher/TARGET, the no-distillation baseline). "
                   "Causal LMs: one folder."),
    teacher_artifacts: Optional[List[Path]] = typer.Option(
        None, help="Output folder of edgekd export run on the teacher itself; repeatable. Each student "
                   "artifact is also compared with the teacher's artifact of the same target, measured in "
                   "the same run (column 'vs teacher/target'): the speedup distillation alone bought."),
    task: Optional[str] = typer.Option(
        None, help="text-classification, image-classification or causal-lm (default: read from the "
                   "student's or teacher's config.json)."),
    out: Optional[Path] = typer.Option(
        None, help="Where report.json, report.md (and for classifiers report.png) go "
                   "(default: --artifacts, else runs/bench)."),
    text_column: Optional[str] = typer.Option(
        None, help=_help("text_column", "Column with the input text.")),
    image_column: Optional[str] = typer.Option(
        None, help="Column with image paths or bytes (default: image, img, path, ...).",
        rich_help_panel=IMAGE_CLASSIFICATION),
    label_column: Optional[str] = typer.Option(
        None, help=_help("label_column", "Column with labels."), rich_help_panel=CLASSIFIERS),
    text_pair_column: Optional[str] = typer.Option(None, help="Second text column.",
        rich_help_panel=TEXT_CLASSIFICATION),
    max_length: Optional[int] = typer.Option(
        None, help=_help("max_length", "Tokens per example for the accuracy (causal LMs: perplexity) pass.")),
    sequence_length: Optional[List[int]] = typer.Option(
        None, help=_help("sequence_length", "Tokens per input for the latency pass; repeatable (the first is the headline)."),
        rich_help_panel=TEXT_CLASSIFICATION),
    threads: Optional[int] = typer.Option(
        None, help="Threads for latency; default: each artifact's target profile (1 = a phone core).",
        rich_help_panel=CLASSIFIERS),
    repeats: Optional[int] = typer.Option(
        None, help=_help("repeats", "Interleaved timed repeats per model at batch 1."),
        rich_help_panel=CLASSIFIERS),
    throughput_batch: Optional[int] = typer.Option(
        None, help=_help("throughput_batch", "Batch size of the throughput pass (0 = skip)."),
        rich_help_panel=CLASSIFIERS),
    memory: Optional[bool] = typer.Option(
        None, help=_help("memory", "Measure peak resident memory (one process per model)."),
        rich_help_panel=CLASSIFIERS),
    roofline: Optional[bool] = typer.Option(
        None, help=_help("roofline", "Count operations and compare with the machine's peak."),
        rich_help_panel=CLASSIFIERS),
    max_accuracy_drop: Optional[float] = typer.Option(
        None, help="Gate: accuracy points an artifact may lose against the student it was "
                   "exported from (default: its target's budget).", rich_help_panel=CLASSIFIERS),
    max_perplexity_ratio: Optional[float] = typer.Option(
        None, help="Gate: perplexity over that of the model an artifact was made from (the student; the "
                   "teacher for the student) (default: its target's budget).", rich_help_panel=CAUSAL_LM),
    max_latency_ms: Optional[float] = typer.Option(
        None, help="Gate: p50 latency at batch 1 in ms; causal LMs: per decoded token (default: its "
                   "target's budget)."),
    max_size_mb: Optional[float] = typer.Option(
        None, help="Gate: model file size in MB (default: its target's budget)."),
    plot: Optional[bool] = typer.Option(
        None, help=_help("plot", "Write report.png (accuracy vs latency, size)."),
        rich_help_panel=CLASSIFIERS),
    new_tokens: Optional[int] = typer.Option(
        None, help=_help("new_tokens", "Tokens generated per speed measurement."), rich_help_panel=CAUSAL_LM),
    rounds: Optional[int] = typer.Option(
        None, help=_help("rounds", "Interleaved speed rounds (medians are reported)."),
        rich_help_panel=CAUSAL_LM),
    quiet: Optional[bool] = typer.Option(
        None, help=_help("quiet", "No progress bars.")),
    trust_remote_code: Optional[bool] = typer.Option(
        None, help=_help("trust_remote_code", "Allow model folders to run their own Python code (only for sources you trust)."),
        rich_help_panel=CLASSIFIERS),
):
    """Compare teacher, student and exported artifacts, measured interleaved: for classifiers
    accuracy, agreement, size, memory, latency and throughput; for causal LMs perplexity,
    next-token agreement with the teacher, prefill and decode speed at 1 thread, memory and
    size. Writes the report, then exits with code 2 when a gate fails. The same as
    `edgekd.bench(...)` in Python.

    Example:

        edgekd bench --teacher runs/teacher --student runs/student --artifacts runs/export --data test.csv --max-latency-ms 20

        edgekd bench --teacher runs/lm-teacher --student runs/lm --artifacts runs/lm-export --data test.txt

        edgekd bench --teacher runs/vit --student runs/cnn --artifacts runs/cnn-export --data photos/test

        edgekd export runs/teacher --target onnx-int8 --out runs/teacher-export
        edgekd bench --teacher runs/teacher --student runs/student --artifacts runs/export --teacher-artifacts runs/teacher-export --data test.csv
    """
    import edgekd
    from edgekd.benchmarking.gates import raise_for_failed_gates

    report = edgekd.bench(**given_options(ctx), log=typer.echo)
    raise_for_failed_gates(report.data["gates"])
