"""The command line: each command parses options, builds a config, calls one stage."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from edgekd.errors import UserError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
    help="Distill a large teacher into a compact student, export it for edge devices, "
         "and prove the result.\n\n"
         "Three commands take a teacher to a shipped artifact:\n\n"
         "    edgekd distill --teacher my-teacher --data train.csv --out runs/student\n\n"
         "    edgekd export runs/student --target onnx-int8 --out runs/export\n\n"
         "    edgekd bench --teacher my-teacher --student runs/student "
         "--artifacts runs/export --data test.csv\n\n"
         "`edgekd demo` runs all three offline on the bundled MiniLM + BBC News default.")

_state = {"debug": False}


@app.callback()
def _global(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    _state["debug"] = debug
    if not debug:
        quiet_libraries()


def quiet_libraries() -> None:
    """Keep the terminal for edgekd's own progress: silence library chatter and their bars."""
    import logging
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization logs on the root logger
    warnings.filterwarnings("ignore", module=r"torch\.onnx.*")
    warnings.filterwarnings("ignore", module=r"transformers.*")
    warnings.filterwarnings("ignore", category=UserWarning)
    try:
        from torch.jit import TracerWarning

        warnings.filterwarnings("ignore", category=TracerWarning)
    except ImportError:
        pass


def user_errors(command: Callable) -> Callable:
    """Turn a UserError into one line on stderr and a non-zero exit (traceback with --debug)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as error:
            if _state["debug"]:
                raise
            typer.secho(f"error: {error}", fg="red", err=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            typer.secho("interrupted; nothing half-written was kept", fg="yellow", err=True)
            raise typer.Exit(130) from None

    return wrapper


# ------------------------------------------------------------------------------- distill

@app.command()
@user_errors
def distill(
    teacher: str = typer.Option(..., help="Teacher: a sequence-classifier folder or hub id."),
    data: Path = typer.Option(..., help="Training data: .csv, .tsv, .jsonl or .parquet."),
    out: Path = typer.Option(..., help="Folder for the student (save_pretrained format)."),
    student_layers: str = typer.Option(
        "2", help="Teacher layers to keep: a count (evenly spaced) or indices like 0,3,5."),
    validation_data: Optional[Path] = typer.Option(
        None, help="Validation data for choosing the best epoch (default: a slice of --data)."),
    validation_fraction: float = typer.Option(
        0.1, help="Share of --data held out for validation when --validation-data is absent."),
    text_column: str = typer.Option("text", help="Column with the input text."),
    label_column: str = typer.Option(
        "label", help="Column with labels (names or indices); empty rows learn from soft labels."),
    text_pair_column: Optional[str] = typer.Option(
        None, help="Column with the second text of text-pair tasks."),
    epochs: int = typer.Option(3, help="Passes over the training data."),
    lr: float = typer.Option(1e-4, help="Peak learning rate (AdamW, warm-up then linear decay)."),
    batch_size: int = typer.Option(16, help="Examples per step."),
    temperature: float = typer.Option(2.0, help="Softmax temperature of the KD term."),
    alpha: float = typer.Option(0.5, help="Weight of hard-label cross-entropy; 1-alpha for KD."),
    max_length: int = typer.Option(128, help="Tokens per example after truncation."),
    seed: int = typer.Option(0, help="Random seed."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    overwrite: bool = typer.Option(False, help="Replace --out if it exists."),
    quiet: bool = typer.Option(False, help="No progress bars."),
):
    """Train a compact student to imitate a teacher (soft labels + hard labels).

    Example:

        edgekd distill --teacher runs/teacher --data train.csv --student-layers 2 --out runs/student
    """
    from edgekd.config import DistillConfig
    from edgekd.data import Columns, load_file, split
    from edgekd.distill.train import distill as run_distill
    from edgekd.models import find_layer_list, load_classifier, parse_layers, select_layers

    config = DistillConfig(epochs=epochs, lr=lr, batch_size=batch_size, temperature=temperature,
                           alpha=alpha, max_length=max_length, seed=seed, device=device,
                           validation_fraction=validation_fraction)
    columns = Columns(text=text_column, label=label_column or None, text_pair=text_pair_column)
    _check_writable(out, overwrite=overwrite)
    teacher_model, tokenizer = load_classifier(teacher, role="teacher")
    train = load_file(data, columns=columns, label2id=_label2id(teacher_model))
    if validation_data is not None:
        validation = load_file(validation_data, columns=columns, label2id=_label2id(teacher_model))
    elif config.validation_fraction > 0 and len(train) >= 20:
        validation, train = split(train, fractions=[config.validation_fraction, 1.0], seed=seed)
    else:
        validation = None
    total = len(find_layer_list(teacher_model)[1])
    student = select_layers(teacher_model, parse_layers(student_layers, total))
    result = run_distill(teacher=teacher_model, student=student, tokenizer=tokenizer,
                         train=train, validation=validation, config=config, out=out,
                         overwrite=overwrite, show_progress=not quiet)
    summary = "  ".join(f"{k} {v:.4f}" for k, v in result.validation.items())
    typer.echo(f"student written to {result.student_dir} (best epoch {result.best_epoch}"
               f"{'; validation ' + summary if summary else ''}; {result.seconds:.0f}s)")


def _label2id(model) -> dict[str, int]:
    return {str(name): int(i) for i, name in model.config.id2label.items()}


def _check_writable(out: Path, *, overwrite: bool) -> None:
    """Fail before any work when --out exists (without --overwrite) or cannot be created."""
    out = Path(out)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output folder {out} already exists; pass --overwrite or choose another --out")
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    import os

    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write under {parent} (permission denied); choose a writable --out")


# ------------------------------------------------------------------------------- export

@app.command()
@user_errors
def export(
    student: Path = typer.Argument(..., help="Student folder written by edgekd distill."),
    target: List[str] = typer.Option(
        ["onnx-int8"], help="Target name from `edgekd targets` or a YAML file; repeatable."),
    out: Path = typer.Option(..., help="Folder that receives one sub-folder per target."),
    overwrite: bool = typer.Option(False, help="Replace existing target folders."),
):
    """Convert a student to ONNX (and quantise it) for each target, checked against PyTorch.

    Example:

        edgekd export runs/student --target onnx-fp32 --target onnx-int8 --out runs/export
    """
    from rich.console import Console
    from rich.table import Table

    from edgekd.export.stage import export as run_export
    from edgekd.targets import load_target

    targets = [load_target(name) for name in target]
    if not Path(student).is_dir():
        raise UserError(f"student folder {student} does not exist; run edgekd distill first")
    artifacts = run_export(Path(student), targets=targets, out=out, overwrite=overwrite)
    table = Table(title=f"exported to {out}")
    for header in ("target", "precision", "size (MB)", "max |Δlogit|", "agreement", "seconds"):
        table.add_column(header)
    for a in artifacts:
        table.add_row(a.target, a.precision, f"{a.size_bytes / 1e6:.1f}",
                      f"{a.parity.max_abs_diff:.1e}", f"{100 * a.parity.agreement:.1f}%",
                      f"{a.seconds:.1f}")
    Console().print(table)


@app.command()
@user_errors
def targets():
    """List the device targets (targets/*.yaml) with a one-line description each."""
    from edgekd.targets import known_targets, load_target

    for name in known_targets():
        target = load_target(name)
        typer.echo(f"{name:<20} {target.format:<5} {target.precision:<13} {target.description}")


# ------------------------------------------------------------------------------- bench

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
    dataset = load_file(data, columns=columns, label2id=_label2id(teacher_model))
    report = run_bench(teacher=teacher, student=student, artifacts=artifacts, data=dataset,
                       max_length=max_length, sequence_length=sequence_length, threads=threads,
                       repeats=repeats, show_progress=not quiet,
                       teacher_model=(teacher_model, tokenizer))
    folder = out or (artifacts if artifacts is not None else Path("runs/bench"))
    write_report(report, Path(folder))
    print_table(report)
    typer.echo(f"report written to {folder}/report.json and report.md")


# ------------------------------------------------------------------------------- demo

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
