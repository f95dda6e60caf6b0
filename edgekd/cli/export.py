"""`edgekd export` (every task) and `edgekd targets`.

One target vocabulary for every task (targets/*.yaml, each saying which tasks it applies
to); the task is read from the student's config.json. A text classifier goes to
edgekd.export.stage, a causal LM to edgekd.lm.export; both write one checked, atomic
folder per target with the same manifest (edgekd/manifest.py).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import List, Optional

import typer

from edgekd.cli.app import app, user_errors
from edgekd.cli.options import CAUSAL_LM, TEXT_CLASSIFICATION, given_options, refuse_other_tasks
from edgekd.errors import UserError, exclusive

TEXT_ONLY_OPTIONS = ("calibration_data", "label_column", "text_pair_column", "exporter", "verify")
CAUSAL_LM_ONLY_OPTIONS = ("max_perplexity_ratio",)
NOT_FOR_IMAGES = ("text_column", "text_pair_column", "max_length", "exporter", "with_tokenizer")
CAUSAL_LM_DEFAULT_TARGETS = ["onnx-fp32", "onnx-int8", "onnx-int4"]


@app.command()
@user_errors
def export(
    ctx: typer.Context,
    student: Path = typer.Argument(
        ..., help="Student folder written by edgekd distill (or any save_pretrained folder)."),
    task: Optional[str] = typer.Option(
        None, help="text-classification, causal-lm or image-classification (default: read from the student's "
                   "config.json)."),
    target: List[str] = typer.Option(
        ["onnx-int8"], help="Target name from `edgekd targets` or a YAML file; repeatable (causal LMs "
                            "default to onnx-fp32, onnx-int8 and onnx-int4)."),
    out: Path = typer.Option(..., help="Folder that receives one sub-folder per target."),
    data: Optional[Path] = typer.Option(
        None, help="Validation data (a file, a saved dataset or a hub id, as for distill): every artifact "
                   "is held to its target's budget on it (accuracy; causal LMs: perplexity). Without it "
                   "classifiers are checked on random batches, causal LMs on text sampled from the student."),
    split: Optional[str] = typer.Option(None, help="Split of a --data dataset (default: validation)."),
    calibration_data: Optional[Path] = typer.Option(
        None, help="Training samples for static int8 calibration (default: --data).",
        rich_help_panel=TEXT_CLASSIFICATION),
    text_column: str = typer.Option("text", help="Column with the input text."),
    image_column: Optional[str] = typer.Option(
        None, help="Image classifiers: the column of a --data table holding image paths or bytes (default: "
                   "image, img, path, ...); a folder of class folders needs none."),
    label_column: str = typer.Option("label", help="Column with labels; empty: agreement only.",
                                     rich_help_panel=TEXT_CLASSIFICATION),
    text_pair_column: Optional[str] = typer.Option(
        None, help="Column with the second text of text-pair tasks.", rich_help_panel=TEXT_CLASSIFICATION),
    max_length: int = typer.Option(
        128, help="Tokens per example after truncation (causal LMs: longest prompt + generated "
                  "tokens, default 512)."),
    exporter: Optional[str] = typer.Option(
        None, help="Override the targets' exporter: torchscript, dynamo or optimum.",
        rich_help_panel=TEXT_CLASSIFICATION),
    max_perplexity_ratio: Optional[float] = typer.Option(
        None, help="Largest perplexity of a quantised export over the fp32 export's (default: the target's "
                   "budget: onnx-int8 1.1, onnx-int4 2); int8 keeps its worst-quantising MatMuls float "
                   "until it holds.", rich_help_panel=CAUSAL_LM),
    verify: List[str] = typer.Option(
        [], help="Also run each ONNX/.ort artifact on another machine and compare it with this one: "
                 "arm64 runs it with the aarch64 onnxruntime under qemu emulation, on an older and a "
                 "recent ARM core (sets itself up on first use, about 250 MB, cached); repeatable.",
        rich_help_panel=TEXT_CLASSIFICATION),
    with_tokenizer: bool = typer.Option(
        False, help="Also write, beside each ONNX/.ort model, one that takes raw strings: for a text "
                    "classifier (single texts or pairs) its WordPiece tokenizer as ONNX Runtime Extensions "
                    "operators in front of the model; for a causal LM (byte-level BPE) a prompt encoder, "
                    "prompt_encoder.onnx. Checked token for token against the Python tokenizer; the app "
                    "registers the extensions library."),
    overwrite: bool = typer.Option(False, help="Replace existing target folders."),
):
    """Convert a student for each target (ONNX, .ort, .pte; fp32, fp16, int8, int4), each
    checked against PyTorch and, with --data, held to its target's budget. A classifier's
    logits are compared; a causal LM becomes ONNX with a key/value cache, its greedy tokens
    compared with PyTorch's and its quantised targets held to a perplexity budget.

    Example:

        edgekd export runs/student --target onnx-fp32 --target onnx-int8 --data val.csv --out runs/export

        edgekd export runs/student --target phone-arm64 --data val.csv --verify arm64 --out runs/export

        edgekd export runs/lm --target onnx-int8 --data held-out.txt --out runs/lm-export

        edgekd export runs/image-student --target onnx-int8 --target ort-mobile --data photos/val --out runs/img
    """
    from edgekd.export.artifact import check_request
    from edgekd.targets import load_targets_for
    from edgekd.tasks import resolve

    given = given_options(ctx)
    task = resolve(task, student)
    refuse_other_tasks(given, task, text_only=TEXT_ONLY_OPTIONS, causal_lm_only=CAUSAL_LM_ONLY_OPTIONS,
                       image_only=("image_column",), not_for_images=NOT_FOR_IMAGES)
    names = list(target) if "target" in given or task != "causal-lm" else CAUSAL_LM_DEFAULT_TARGETS
    targets = load_targets_for(names, task)
    if not 2 <= max_length <= 8192:
        raise UserError(f"--max-length {max_length} is out of range; choose 2 to 8192")
    check_request(student, targets, out, overwrite=overwrite, task=task)
    from edgekd.export.verify import check_choices

    check_choices(verify)
    with contextlib.ExitStack() as locks:  # one writer per target folder, from the first moment
        for chosen in targets:
            locks.enter_context(exclusive(out / chosen.name))
        _export(student, task=task, targets=targets, out=out, overwrite=overwrite, data=data, split=split,
                calibration_data=calibration_data, text_column=text_column, label_column=label_column,
                text_pair_column=text_pair_column, max_length=max_length, given=given, exporter=exporter,
                max_perplexity_ratio=max_perplexity_ratio, verify=tuple(verify), with_tokenizer=with_tokenizer,
                image_column=image_column)


def _export(student: Path, *, task: str, targets, out: Path, overwrite: bool, data, split, calibration_data,
            text_column: str, label_column: str, text_pair_column, max_length: int, given: set[str], exporter,
            max_perplexity_ratio, verify: tuple[str, ...], with_tokenizer: bool, image_column=None) -> None:
    if task == "causal-lm":
        _export_causal_lm(student, targets=targets, out=out, overwrite=overwrite, data=data, split=split,
                          text_column=text_column, max_length=max_length if "max_length" in given else 512,
                          max_perplexity_ratio=max_perplexity_ratio, with_tokenizer=with_tokenizer)
        return
    from edgekd.export.stage import export as run_export
    from edgekd.targets import EXPORTERS

    if exporter is not None and exporter not in EXPORTERS:
        raise UserError(f"--exporter '{exporter}' is not one of {', '.join(EXPORTERS)}")
    if task == "image-classification":
        validation = _images(data, student, image_column, label_column, split=split, default_split="validation")
        calibration = _images(calibration_data, student, image_column, None, split=None, default_split="train")
    else:
        validation = _dataset(data, student, text_column, label_column, text_pair_column, split=split)
        calibration = _dataset(calibration_data, student, text_column, None, text_pair_column, split="train")
    artifacts = run_export(
        student, targets=targets, out=out, overwrite=overwrite, exporter=exporter,
        validation=validation, validation_source=str(data) if data else "validation data",
        calibration=calibration,
        calibration_source=str(calibration_data) if calibration_data else "calibration data",
        max_length=max_length, verify=verify, with_tokenizer=with_tokenizer, task=task)
    _print_summary(artifacts, out, checked_accuracy=validation is not None)


def _export_causal_lm(student: Path, *, targets, out: Path, overwrite: bool, data: Optional[Path],
                      split: Optional[str], text_column: str, max_length: int,
                      max_perplexity_ratio: Optional[float], with_tokenizer: bool = False) -> None:
    from edgekd.lm.data import read_texts
    from edgekd.lm.export import export_lm

    texts = read_texts(data, text_column=text_column, split=split, default_split="validation")[0] if data else None
    artifacts = export_lm(student, targets=targets, out=out, overwrite=overwrite, max_length=max_length,
                          gate_texts=texts, gate_source=str(data) if data else "",
                          max_perplexity_ratio=max_perplexity_ratio, with_tokenizer=with_tokenizer)
    for artifact in artifacts:
        gate = f"  perplexity {artifact.perplexity_ratio:.3f}x fp32" if artifact.perplexity_ratio else ""
        kept = f" ({artifact.kept_float} MatMuls kept float)" if artifact.kept_float else ""
        typer.echo(f"{artifact.target:<12} {artifact.folder / artifact.model_file}  "
                   f"{artifact.size_bytes / 2**20:.1f} MB  greedy tokens equal to PyTorch: "
                   f"{artifact.greedy_agreement:.0%}{gate}{kept}")


def _images(path: Optional[Path], student: Path, image_column: Optional[str], label_column: Optional[str], *,
            split: Optional[str], default_split: str):
    """Images (edgekd/vision/data.py) read with the student's label names, or None when no data was given."""
    if path is None:
        return None
    from edgekd.vision.data import load_images

    config = json.loads((Path(student) / "config.json").read_text())
    label2id = {str(name): int(index) for index, name in (config.get("id2label") or {}).items()}
    return load_images(path, label2id=label2id, image_column=image_column, label_column=label_column or None,
                       split=split, default_split=default_split, show_progress=True)


def _dataset(path: Optional[Path], student: Path, text_column: str, label_column: Optional[str],
             text_pair_column: Optional[str], *, split: Optional[str]):
    """A data file read with the student's label names, or None when no file was given."""
    if path is None:
        return None
    from edgekd.data import Columns, load_file

    config = json.loads((Path(student) / "config.json").read_text())
    label2id = {str(name): int(index) for index, name in (config.get("id2label") or {}).items()}
    columns = Columns(text=text_column, label=label_column or None, text_pair=text_pair_column)
    default = "validation" if label_column else "train"
    return load_file(path, columns=columns, label2id=label2id, split=split if label_column else None,
                     default_split=default)


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
    """List the device targets (targets/*.yaml) by task, with a one-line description each.
    A target serves every task it lists; device profiles inherit from a target with `base:`."""
    from edgekd.targets import known_targets, load_target
    from edgekd.tasks import TASKS

    for task in TASKS.values():
        typer.echo(f"{task.name}: {task.summary}")
        for name in known_targets(task.name):
            target = load_target(name)
            typer.echo(f"  {name:<17} {target.format:<4} {target.precision:<12} "
                       f"{target.runtime.threads:>2} thr  {target.description}")
