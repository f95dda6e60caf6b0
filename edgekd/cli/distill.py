"""`edgekd distill`: options -> DistillConfig -> distill stage."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from edgekd.cli.app import app, user_errors
from edgekd.errors import UserError


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
    train = load_file(data, columns=columns, label2id=label2id_of(teacher_model))
    if validation_data is not None:
        validation = load_file(validation_data, columns=columns, label2id=label2id_of(teacher_model))
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


def label2id_of(model) -> dict[str, int]:
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
