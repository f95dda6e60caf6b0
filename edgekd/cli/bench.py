"""`edgekd bench`: teacher, student and artifacts on the same data -> report and gates.

The task is read from the student's or teacher's config.json. A text or image classifier is measured by
edgekd.bench.stage, a causal LM by edgekd.lm.bench (perplexity, agreement, decode speed);
both reports have one schema (docs/report-schema.md) and go through the same gates: a failed
gate still writes the report, then exits with code 2."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from edgekd.cli.app import app, user_errors
from edgekd.cli.distill import label2id_of
from edgekd.cli.options import CAUSAL_LM, IMAGE_CLASSIFICATION, TEXT_CLASSIFICATION, given_options, refuse_other_tasks

CLASSIFICATION = "Text and image classification"

TEXT_ONLY_OPTIONS = (
    "label_column", "text_pair_column", "sequence_length", "threads", "repeats", "throughput_batch",
    "memory", "roofline", "max_accuracy_drop", "plot", "trust_remote_code")
CAUSAL_LM_ONLY_OPTIONS = ("new_tokens", "rounds", "max_perplexity_ratio")
# options of text classifiers that image classifiers have no use for (they serve both otherwise)
NOT_FOR_IMAGES = ("text_column", "text_pair_column", "sequence_length", "max_length")


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
    text_column: str = typer.Option("text", help="Column with the input text."),
    image_column: Optional[str] = typer.Option(
        None, help="Column with image paths or bytes (default: image, img, path, ...).",
        rich_help_panel=IMAGE_CLASSIFICATION),
    label_column: str = typer.Option("label", help="Column with labels.", rich_help_panel=CLASSIFICATION),
    text_pair_column: Optional[str] = typer.Option(None, help="Second text column.",
                                                   rich_help_panel=TEXT_CLASSIFICATION),
    max_length: int = typer.Option(128, help="Tokens per example for the accuracy (causal LMs: perplexity) pass."),
    sequence_length: List[int] = typer.Option(
        [128], help="Tokens per input for the latency pass; repeatable (the first is the headline).",
        rich_help_panel=TEXT_CLASSIFICATION),
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
    max_perplexity_ratio: Optional[float] = typer.Option(
        None, help="Gate: perplexity over that of the model an artifact was made from (the student; the "
                   "teacher for the student) (default: its target's budget).", rich_help_panel=CAUSAL_LM),
    max_latency_ms: Optional[float] = typer.Option(
        None, help="Gate: p50 latency at batch 1 in ms; causal LMs: per decoded token (default: its "
                   "target's budget)."),
    max_size_mb: Optional[float] = typer.Option(
        None, help="Gate: model file size in MB (default: its target's budget)."),
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
    """Compare teacher, student and exported artifacts, measured interleaved: for classifiers
    accuracy, agreement, size, memory, latency and throughput; for causal LMs perplexity,
    next-token agreement with the teacher, prefill and decode speed at 1 thread, memory and
    size. Writes the report, then exits with code 2 when a gate fails.

    Example:

        edgekd bench --teacher runs/teacher --student runs/student --artifacts runs/export --data test.csv --max-latency-ms 20

        edgekd bench --teacher runs/lm-teacher --student runs/lm --artifacts runs/lm-export --data test.txt

        edgekd bench --teacher runs/vit --student runs/cnn --artifacts runs/cnn-export --data photos/test

        edgekd export runs/teacher --target onnx-int8 --out runs/teacher-export
        edgekd bench --teacher runs/teacher --student runs/student --artifacts runs/export --teacher-artifacts runs/teacher-export --data test.csv
    """
    from edgekd.bench.gates import GateLimits, raise_for_failed_gates
    from edgekd.bench.report import print_table, write_report
    from edgekd.errors import exclusive
    from edgekd.tasks import resolve

    given = given_options(ctx)
    task = resolve(task, student, teacher, hub=True)
    refuse_other_tasks(given, task, text_only=TEXT_ONLY_OPTIONS, causal_lm_only=CAUSAL_LM_ONLY_OPTIONS,
                       image_only=("image_column",), not_for_images=NOT_FOR_IMAGES)
    gates = GateLimits(max_accuracy_drop=max_accuracy_drop, max_perplexity_ratio=max_perplexity_ratio,
                       max_latency_ms=max_latency_ms, max_size_mb=max_size_mb)
    folder = Path(out or (artifacts[0] if artifacts else "runs/bench"))
    artifacts = list(artifacts or []) + _teacher_exports(teacher_artifacts or [], teacher=teacher) or None
    with exclusive(folder, what="bench report folder"):  # one bench writes a report folder at a time
        if task == "causal-lm":
            from edgekd.lm.bench import bench_lm
            from edgekd.lm.data import read_texts

            texts, _ = read_texts(data, text_column=text_column, split=split, default_split="test")
            report = bench_lm(teacher_dir=Path(teacher), student_dir=student, artifacts=artifacts or None,
                              texts=texts, max_length=max_length, new_tokens=new_tokens, rounds=rounds,
                              gates=gates)
            plot = False
        elif task == "image-classification":
            report = _bench_images(teacher, data=data, split=split, student=student, artifacts=artifacts,
                                   image_column=image_column, label_column=label_column, threads=threads,
                                   repeats=repeats, throughput_batch=throughput_batch, memory=memory,
                                   roofline=roofline, gates=gates, quiet=quiet,
                                   trust_remote_code=trust_remote_code)
        else:
            report = _bench_classifier(teacher, data=data, split=split, student=student, artifacts=artifacts,
                                       text_column=text_column, label_column=label_column,
                                       text_pair_column=text_pair_column, max_length=max_length,
                                       sequence_length=sequence_length, threads=threads, repeats=repeats,
                                       throughput_batch=throughput_batch, memory=memory, roofline=roofline,
                                       gates=gates, quiet=quiet, trust_remote_code=trust_remote_code)
        write_report(report, folder, plot=plot)
    print_table(report)
    typer.echo(f"report written to {folder}/report.json, report.md"
               f"{' and report.png' if plot else ''}")
    raise_for_failed_gates(report["gates"])


def _teacher_exports(roots: list[Path], *, teacher: str) -> list[Path]:
    """The artifact folders under `roots`, each checked to be exported from `teacher`."""
    from edgekd.errors import UserError
    from edgekd.lm.models import dequantised_gguf
    from edgekd.manifest import artifact_folders, origin_of, read_manifest

    reference = dequantised_gguf(Path(teacher)) if teacher.lower().endswith(".gguf") else Path(teacher)
    folders = [folder for root in roots for folder in artifact_folders(root)]
    for folder in folders:
        manifest = read_manifest(folder)
        if origin_of(manifest, reference) != "teacher":
            raise UserError(f"--teacher-artifacts {folder} was exported from {manifest.get('source_student')}, "
                            f"not from the teacher {teacher}; export the teacher itself: "
                            f"edgekd export {teacher} --target {manifest.get('target')} --out DIR")
    return folders


def _bench_classifier(teacher: str, *, data: Path, split, student, artifacts, text_column, label_column,
                      text_pair_column, max_length, sequence_length, threads, repeats, throughput_batch,
                      memory, roofline, gates, quiet, trust_remote_code) -> dict:
    from edgekd.bench.stage import bench as run_bench
    from edgekd.data import Columns, load_file
    from edgekd.models import load_classifier

    teacher_model, tokenizer = load_classifier(teacher, role="teacher",
                                               trust_remote_code=trust_remote_code)
    columns = Columns(text=text_column, label=label_column or None, text_pair=text_pair_column)
    dataset = load_file(data, columns=columns, label2id=label2id_of(teacher_model), split=split,
                        default_split="test")
    return run_bench(teacher=teacher, student=student, artifacts=artifacts or None, data=dataset,
                     max_length=max_length, sequence_lengths=sequence_length, threads=threads,
                     repeats=repeats, throughput_batch_size=throughput_batch,
                     measure_memory=memory, measure_roofline=roofline, gates=gates,
                     show_progress=not quiet, teacher_model=(teacher_model, tokenizer))


def _bench_images(teacher: str, *, data: Path, split, student, artifacts, image_column, label_column, threads,
                  repeats, throughput_batch, memory, roofline, gates, quiet, trust_remote_code) -> dict:
    from edgekd.bench.stage import bench as run_bench
    from edgekd.vision.data import load_images
    from edgekd.vision.models import load_image_classifier

    teacher_model, processor = load_image_classifier(teacher, role="teacher", trust_remote_code=trust_remote_code)
    images = load_images(data, label2id=label2id_of(teacher_model), image_column=image_column,
                         label_column=label_column or None, split=split, default_split="test",
                         show_progress=not quiet)
    return run_bench(teacher=teacher, student=student, artifacts=artifacts or None, data=images, threads=threads,
                     repeats=repeats, throughput_batch_size=throughput_batch, measure_memory=memory,
                     measure_roofline=roofline, gates=gates, show_progress=not quiet,
                     teacher_model=(teacher_model, processor))
