"""`edgekd bench`: teacher, student and artifacts on the same data -> report and gates."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from edgekd.cli.app import app, user_errors
from edgekd.cli.distill import label2id_of


@app.command()
@user_errors
def bench(
    teacher: str = typer.Option(..., help="Teacher folder or hub id (the reference)."),
    data: Path = typer.Option(..., help="Labelled evaluation data (.csv, .tsv, .jsonl, .parquet)."),
    student: Optional[Path] = typer.Option(None, help="Student folder (PyTorch) to include."),
    artifacts: Optional[List[Path]] = typer.Option(
        None, help="Output folder of edgekd export; repeatable (artifacts exported from the "
                   "teacher itself are reported as teacher/TARGET, the no-distillation baseline)."),
    out: Optional[Path] = typer.Option(
        None, help="Where report.json, .md and .png go (default: --artifacts, else runs/bench)."),
    text_column: str = typer.Option("text", help="Column with the input text."),
    label_column: str = typer.Option("label", help="Column with labels."),
    text_pair_column: Optional[str] = typer.Option(None, help="Second text column."),
    max_length: int = typer.Option(128, help="Tokens per example for the accuracy pass."),
    sequence_length: List[int] = typer.Option(
        [128], help="Tokens per input for the latency pass; repeatable (the first is the headline)."),
    threads: Optional[int] = typer.Option(
        None, help="Threads for latency; default: each artifact's target profile (1 = a phone core)."),
    repeats: int = typer.Option(50, help="Interleaved timed repeats per model at batch 1."),
    throughput_batch: int = typer.Option(32, help="Batch size of the throughput pass (0 = skip)."),
    memory: bool = typer.Option(True, help="Measure peak resident memory (one process per model)."),
    roofline: bool = typer.Option(True, help="Count operations and compare with the machine's peak."),
    max_accuracy_drop: Optional[float] = typer.Option(
        None, help="Gate: accuracy points an artifact may lose against the student it was "
                   "exported from (default: its target's budget)."),
    max_latency_ms: Optional[float] = typer.Option(
        None, help="Gate: p50 latency at batch 1 in ms (default: its target's budget)."),
    max_size_mb: Optional[float] = typer.Option(
        None, help="Gate: model file size in MB (default: its target's budget)."),
    plot: bool = typer.Option(True, help="Write report.png (accuracy vs latency, size)."),
    quiet: bool = typer.Option(False, help="No progress bars."),
    trust_remote_code: bool = typer.Option(
        False, help="Allow model folders to run their own Python code (only for sources you trust)."),
):
    """Compare teacher, student and exported artifacts: accuracy, agreement, size, memory,
    latency and throughput, measured interleaved. Exits with code 2 when a gate fails.

    Example:

        edgekd bench --teacher runs/teacher --student runs/student --artifacts runs/export --data test.csv --max-latency-ms 20
    """
    from edgekd.bench.gates import GateLimits, raise_for_failed_gates
    from edgekd.bench.report import print_table, write_report
    from edgekd.bench.stage import bench as run_bench
    from edgekd.data import Columns, load_file
    from edgekd.models import load_classifier

    gates = GateLimits(max_accuracy_drop=max_accuracy_drop, max_latency_ms=max_latency_ms,
                       max_size_mb=max_size_mb)
    teacher_model, tokenizer = load_classifier(teacher, role="teacher",
                                               trust_remote_code=trust_remote_code)
    columns = Columns(text=text_column, label=label_column or None, text_pair=text_pair_column)
    dataset = load_file(data, columns=columns, label2id=label2id_of(teacher_model))
    report = run_bench(teacher=teacher, student=student, artifacts=artifacts or None, data=dataset,
                       max_length=max_length, sequence_lengths=sequence_length, threads=threads,
                       repeats=repeats, throughput_batch_size=throughput_batch,
                       measure_memory=memory, measure_roofline=roofline, gates=gates,
                       show_progress=not quiet, teacher_model=(teacher_model, tokenizer))
    folder = Path(out or (artifacts[0] if artifacts else "runs/bench"))
    write_report(report, folder, plot=plot)
    print_table(report)
    typer.echo(f"report written to {folder}/report.json, report.md"
               f"{' and report.png' if plot else ''}")
    raise_for_failed_gates(report["gates"])
