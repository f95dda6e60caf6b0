"""`edgekd bench`: teacher, student and artifacts on the same data -> report and gates.

A causal LM (found from the student's or teacher's config.json, or --task causal-lm) is
measured by edgekd.lm.bench instead: perplexity, agreement, tokens/s, memory and size."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from edgekd.cli.app import app, user_errors
from edgekd.cli.distill import label2id_of
from edgekd.errors import UserError

CLASSIFICATION = "Classification only"
CAUSAL_LM = "Causal LM only"
CLASSIFICATION_ONLY_OPTIONS = (
    "label_column", "text_pair_column", "sequence_length", "threads", "repeats", "throughput_batch",
    "memory", "roofline", "max_accuracy_drop", "max_latency_ms", "max_size_mb", "plot", "trust_remote_code")
CAUSAL_LM_ONLY_OPTIONS = ("new_tokens", "rounds")


@app.command()
@user_errors
def bench(
    ctx: typer.Context,
    teacher: str = typer.Option(
        ..., help="Teacher folder or hub id (the reference; a causal LM may be a .gguf file)."),
    data: Path = typer.Option(
        ..., help="Evaluation data (.csv, .tsv, .jsonl, .parquet): labelled for classifiers; "
                  "held-out text for causal LMs (also .txt, one text per line)."),
    student: Optional[Path] = typer.Option(None, help="Student folder (PyTorch) to include."),
    artifacts: Optional[List[Path]] = typer.Option(
        None, help="Output folder of edgekd export; repeatable (artifacts exported from the "
                   "teacher itself are reported as teacher/TARGET, the no-distillation baseline). "
                   "Causal LMs: one folder."),
    task: Optional[str] = typer.Option(
        None, help="classification or causal-lm (default: read from the student's or teacher's config.json)."),
    out: Optional[Path] = typer.Option(
        None, help="Where report.json (and for classifiers report.md, .png) go "
                   "(default: --artifacts, else runs/bench)."),
    text_column: str = typer.Option("text", help="Column with the input text."),
    label_column: str = typer.Option("label", help="Column with labels.", rich_help_panel=CLASSIFICATION),
    text_pair_column: Optional[str] = typer.Option(None, help="Second text column.",
                                                   rich_help_panel=CLASSIFICATION),
    max_length: int = typer.Option(128, help="Tokens per example for the accuracy (causal LMs: perplexity) pass."),
    sequence_length: List[int] = typer.Option(
        [128], help="Tokens per input for the latency pass; repeatable (the first is the headline).",
        rich_help_panel=CLASSIFICATION),
    threads: Optional[int] = typer.Option(
        None, help="Threads for latency; default: each artifact's target profile (1 = a phone core).",
        rich_help_panel=CLASSIFICATION),
    repeats: int = typer.Option(50, help="Interleaved timed repeats per model at batch 1.",
                                rich_help_panel=CLASSIFICATION),
    throughput_batch: int = typer.Option(32, help="Batch size of the throughput pass (0 = skip).",
                                         rich_help_panel=CLASSIFICATION),
    memory: bool = typer.Option(True, help="Measure peak resident memory (one process per model).",
                                rich_help_panel=CLASSIFICATION),
    roofline: bool = typer.Option(True, help="Count operations and compare with the machine's peak.",
                                  rich_help_panel=CLASSIFICATION),
    max_accuracy_drop: Optional[float] = typer.Option(
        None, help="Gate: accuracy points an artifact may lose against the student it was "
                   "exported from (default: its target's budget).", rich_help_panel=CLASSIFICATION),
    max_latency_ms: Optional[float] = typer.Option(
        None, help="Gate: p50 latency at batch 1 in ms (default: its target's budget).",
        rich_help_panel=CLASSIFICATION),
    max_size_mb: Optional[float] = typer.Option(
        None, help="Gate: model file size in MB (default: its target's budget).", rich_help_panel=CLASSIFICATION),
    plot: bool = typer.Option(True, help="Write report.png (accuracy vs latency, size).",
                              rich_help_panel=CLASSIFICATION),
    new_tokens: int = typer.Option(64, help="Tokens generated per speed measurement.", rich_help_panel=CAUSAL_LM),
    rounds: int = typer.Option(3, help="Interleaved speed rounds (medians are reported).",
                               rich_help_panel=CAUSAL_LM),
    quiet: bool = typer.Option(False, help="No progress bars."),
    trust_remote_code: bool = typer.Option(
        False, help="Allow model folders to run their own Python code (only for sources you trust).",
        rich_help_panel=CLASSIFICATION),
):
    """Compare teacher, student and exported artifacts: accuracy, agreement, size, memory,
    latency and throughput, measured interleaved. Exits with code 2 when a gate fails.
    For a causal LM: perplexity, next-token agreement with the teacher, prefill/decode
    tokens/s at 1 thread, peak memory and size.

    Example:

        edgekd bench --teacher runs/teacher --student runs/student --artifacts runs/export --data test.csv --max-latency-ms 20

        edgekd bench --teacher runs/lm-teacher --student runs/lm --artifacts runs/lm-export --data test.txt
    """
    from edgekd.cli.lm import given_options, refuse_options, resolved_task

    given = given_options(ctx)
    if resolved_task(task, student, teacher) == "causal-lm":
        refuse_options(given, CLASSIFICATION_ONLY_OPTIONS, task="causal-lm")
        _bench_causal_lm(teacher=teacher, data=data, student=student, artifacts=artifacts or [], out=out,
                         text_column=text_column, max_length=max_length, new_tokens=new_tokens, rounds=rounds)
        return
    refuse_options(given, CAUSAL_LM_ONLY_OPTIONS, task="classification")
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


def _bench_causal_lm(*, teacher: str, data: Path, student: Optional[Path], artifacts: List[Path],
                     out: Optional[Path], text_column: str, max_length: int, new_tokens: int,
                     rounds: int) -> None:
    from edgekd.cli.lm import run_lm_bench

    if len(artifacts) > 1:
        raise UserError("a causal LM is benched with one --artifacts folder (written by edgekd export); "
                        f"got {len(artifacts)}")
    folder = Path(out or (artifacts[0] if artifacts else "runs/bench"))
    run_lm_bench(teacher=Path(teacher), data=data, student=student, artifacts=artifacts[0] if artifacts else None,
                 out=folder, text_column=text_column, max_length=max_length, new_tokens=new_tokens,
                 rounds=rounds)
