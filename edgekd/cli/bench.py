"""`edgekd bench`: teacher, student and artifacts on the same data -> report."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from edgekd.cli.app import app, user_errors
from edgekd.cli.distill import label2id_of
from edgekd.errors import UserError


@app.command()
@user_errors
def bench(
    teacher: str = typer.Option(..., help="Teacher folder or hub id (the reference)."),
    data: Path = typer.Option(..., help="Labelled evaluation data (.csv, .tsv, .jsonl, .parquet)."),
    student: Optional[Path] = typer.Option(None, help="Student folder (PyTorch) to include."),
    artifacts: Optional[Path] = typer.Option(None, help="Output folder of edgekd export."),
    out: Optional[Path] = typer.Option(
        None, help="Where report.json and report.md go (default: --artifacts, else runs/bench)."),
    text_column: str = typer.Option("text", help="Column with the input text."),
    label_column: str = typer.Option("label", help="Column with labels."),
    text_pair_column: Optional[str] = typer.Option(None, help="Second text column."),
    max_length: int = typer.Option(128, help="Tokens per example for the accuracy pass."),
    sequence_length: int = typer.Option(128, help="Tokens per input for the latency pass."),
    threads: int = typer.Option(1, help="Threads for latency (1 = one phone core)."),
    repeats: int = typer.Option(50, help="Interleaved timed repeats per model."),
    quiet: bool = typer.Option(False, help="No progress bars."),
):
    """Compare teacher, student and exported artifacts: accuracy, agreement, size, latency.

    Example:

        edgekd bench --teacher runs/teacher --student runs/student --artifacts runs/export --data test.csv
    """
    from edgekd.bench.report import print_table, write_report
    from edgekd.bench.stage import bench as run_bench
    from edgekd.data import Columns, load_file
    from edgekd.models import load_classifier

    if threads < 1 or repeats < 1 or max_length < 8 or sequence_length < 1:
        raise UserError("--threads and --repeats must be at least 1, --max-length at least 8, "
                        "--sequence-length at least 1")
    teacher_model, tokenizer = load_classifier(teacher, role="teacher")
    columns = Columns(text=text_column, label=label_column or None, text_pair=text_pair_column)
    dataset = load_file(data, columns=columns, label2id=label2id_of(teacher_model))
    report = run_bench(teacher=teacher, student=student, artifacts=artifacts, data=dataset,
                       max_length=max_length, sequence_length=sequence_length, threads=threads,
                       repeats=repeats, show_progress=not quiet,
                       teacher_model=(teacher_model, tokenizer))
    folder = out or (artifacts if artifacts is not None else Path("runs/bench"))
    write_report(report, Path(folder))
    print_table(report)
    typer.echo(f"report written to {folder}/report.json and report.md")
