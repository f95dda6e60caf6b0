"""`edgekd export` (classifiers and causal LMs) and `edgekd targets`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from edgekd.cli.app import app, user_errors
from edgekd.errors import UserError


CLASSIFICATION = "Classification only"
CAUSAL_LM = "Causal LM only"
# Options only classifier exports read (parameter names); --target, --out, --data,
# --text-column, --max-length and --overwrite serve both tasks.
CLASSIFICATION_ONLY_OPTIONS = ("calibration_data", "label_column", "text_pair_column", "exporter")
CAUSAL_LM_ONLY_OPTIONS = ("max_perplexity_ratio",)


@app.command()
@user_errors
def export(
    ctx: typer.Context,
    student: Path = typer.Argument(
        ..., help="Student folder written by edgekd distill (classifier or causal LM)."),
    task: Optional[str] = typer.Option(
        None, help="classification or causal-lm (default: read from the student's config.json)."),
    target: List[str] = typer.Option(
        ["onnx-int8"], help="Target name from `edgekd targets` or a YAML file; repeatable. Causal LMs: "
                            "fp32, int8, int4 or int8-ort (default fp32, int8 and int4)."),
    out: Path = typer.Option(..., help="Folder that receives one sub-folder per target."),
    data: Optional[Path] = typer.Option(
        None, help="Validation data (.csv/.jsonl/.parquet): every artifact's accuracy is held "
                   "to its target's budget on it. Without it, only random-batch parity is checked. "
                   "Causal LMs: held-out text (.txt too) for the perplexity budget; without it, "
                   "text sampled from the student."),
    calibration_data: Optional[Path] = typer.Option(
        None, help="Training samples for static int8 calibration (default: --data).",
        rich_help_panel=CLASSIFICATION),
    text_column: str = typer.Option("text", help="Column with the input text."),
    label_column: str = typer.Option("label", help="Column with labels; empty: agreement only.",
                                     rich_help_panel=CLASSIFICATION),
    text_pair_column: Optional[str] = typer.Option(
        None, help="Column with the second text of text-pair tasks.", rich_help_panel=CLASSIFICATION),
    max_length: int = typer.Option(
        128, help="Tokens per example after truncation (causal LMs: longest prompt + generated "
                  "tokens, default 512)."),
    exporter: Optional[str] = typer.Option(
        None, help="Override the targets' exporter: torchscript, dynamo or optimum.",
        rich_help_panel=CLASSIFICATION),
    max_perplexity_ratio: Optional[float] = typer.Option(
        None, help="Largest perplexity of a quantised export over the fp32 export's (default: int8 "
                   "1.1, int4 2); int8 keeps its worst-quantising MatMuls float until it holds.",
        rich_help_panel=CAUSAL_LM),
    overwrite: bool = typer.Option(False, help="Replace existing target folders."),
):
    """Convert a student for each target (ONNX, .ort, .pte; fp32, fp16, int8), checked
    against PyTorch and, with --data, held to each target's accuracy budget. A causal LM
    (found from its config.json, or --task causal-lm) becomes ONNX with a key/value cache
    (fp32, int8, int4, int8-ort), its greedy generation checked token for token and its
    quantised targets held to a perplexity budget against fp32.

    Example:

        edgekd export runs/student --target onnx-fp32 --target onnx-int8 --data val.csv --out runs/export

        edgekd export runs/lm --target int8 --data held-out.txt --out runs/lm-export
    """
    from edgekd.cli.lm import given_options, refuse_options, resolved_task

    given = given_options(ctx)
    if resolved_task(task, student) == "causal-lm":
        _export_causal_lm(student, targets=list(target) if "target" in given else None, out=out,
                          max_length=max_length if "max_length" in given else None,
                          overwrite=overwrite, given=given, data=data, text_column=text_column,
                          max_perplexity_ratio=max_perplexity_ratio)
        return
    refuse_options(given, CAUSAL_LM_ONLY_OPTIONS, task="classification")
    from edgekd.export.stage import check_student_folder, export as run_export
    from edgekd.targets import EXPORTERS, load_target

    _refuse_causal_lm_targets(target)
    targets = [load_target(name) for name in target]
    if exporter is not None and exporter not in EXPORTERS:
        raise UserError(f"--exporter '{exporter}' is not one of {', '.join(EXPORTERS)}")
    if not 2 <= max_length <= 8192:
        raise UserError(f"--max-length {max_length} is out of range; choose 2 to 8192")
    check_student_folder(student)
    validation = _dataset(data, student, text_column, label_column, text_pair_column)
    calibration = _dataset(calibration_data, student, text_column, None, text_pair_column)
    artifacts = run_export(
        student, targets=targets, out=out, overwrite=overwrite, exporter=exporter,
        validation=validation, validation_source=str(data) if data else "validation data",
        calibration=calibration,
        calibration_source=str(calibration_data) if calibration_data else "calibration data",
        max_length=max_length)
    _print_summary(artifacts, out, checked_accuracy=validation is not None)


def _export_causal_lm(student: Path, *, targets: Optional[list[str]], out: Path, max_length: Optional[int],
                      overwrite: bool, given: set[str], data: Optional[Path], text_column: str,
                      max_perplexity_ratio: Optional[float]) -> None:
    """A causal LM: its own targets (the defaults of lm-export unless --target is given)."""
    from edgekd.cli.lm import LM_EXPORT_DEFAULT_TARGETS, refuse_options, run_lm_export
    from edgekd.lm.export import LM_TARGETS

    refuse_options(given, CLASSIFICATION_ONLY_OPTIONS, task="causal-lm")
    for name in targets or []:
        if name not in LM_TARGETS:
            raise UserError(f"target '{name}' is not a causal-LM target; {student} is a causal LM: "
                            f"choose from {', '.join(LM_TARGETS)}")
    run_lm_export(student, targets=targets or LM_EXPORT_DEFAULT_TARGETS, out=out,
                  max_length=max_length or 512, overwrite=overwrite, data=data, text_column=text_column,
                  max_perplexity_ratio=max_perplexity_ratio)


def _refuse_causal_lm_targets(names: list[str]) -> None:
    """A causal-LM target name asked for a classifier: say which targets fit."""
    from edgekd.lm.export import LM_TARGETS
    from edgekd.targets import known_targets

    for name in names:
        if name in LM_TARGETS and name not in known_targets():
            raise UserError(f"target '{name}' is for causal LMs, and this student is a classifier; "
                            f"choose from {', '.join(known_targets())} (or pass --task causal-lm for a causal LM)")


def _dataset(path: Optional[Path], student: Path, text_column: str, label_column: Optional[str],
             text_pair_column: Optional[str]):
    """A data file read with the student's label names, or None when no file was given."""
    if path is None:
        return None
    from edgekd.data import Columns, load_file

    config = json.loads((Path(student) / "config.json").read_text())
    label2id = {str(name): int(index) for index, name in (config.get("id2label") or {}).items()}
    columns = Columns(text=text_column, label=label_column or None, text_pair=text_pair_column)
    return load_file(path, columns=columns, label2id=label2id)


def _print_summary(artifacts, out: Path, *, checked_accuracy: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"exported to {out}")
    table.add_column("target", no_wrap=True)
    for header in ("format", "MB", "parity", "accuracy (Δ)", "float", "s"):
        table.add_column(header, justify="left" if header in ("format", "parity") else "right")
    for artifact in artifacts:
        table.add_row(artifact.target, f"{artifact.format} {artifact.precision}",
                      f"{artifact.size_bytes / 1e6:.2f}", _parity_cell(artifact.parity),
                      _accuracy_cell(artifact.accuracy), str(len(artifact.nodes_kept_float)),
                      f"{artifact.seconds:.1f}")
    console = Console()
    console.print(table)
    for artifact in artifacts:
        if artifact.accuracy is not None and artifact.accuracy.within_noise:
            console.print(f"{artifact.target}: {artifact.accuracy.describe()}; pass more --data "
                          "rows to measure the drop more finely")
    if not checked_accuracy:
        console.print("accuracy not checked: no --data given, artifacts were checked on random "
                      "batches only (the manifests say so)")


def _parity_cell(parity) -> str:
    if parity.tolerance is None:  # int8: agreement is the check
        return f"agree {100 * parity.agreement:.0f}%"
    return f"{parity.max_abs_diff:.1e} ≤ {parity.tolerance:.0e}"


def _accuracy_cell(accuracy) -> str:
    if accuracy is None:
        return "not checked"
    if accuracy.accuracy is None:
        return f"agree {accuracy.agreement:.1f}%"
    noise = " ~" if accuracy.within_noise else ""  # explained below the table
    return f"{accuracy.accuracy:.1f}% ({(-accuracy.drop or 0.0):+.2f}){noise}"


@app.command()
@user_errors
def targets():
    """List the device targets (targets/*.yaml) with a one-line description each."""
    from edgekd.targets import known_targets, load_target

    for name in known_targets():
        target = load_target(name)
        typer.echo(f"{name:<17} {target.format:<4} {target.precision:<12} "
                   f"{target.runtime.threads:>2} thr  {target.description}")
