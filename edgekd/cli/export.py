"""`edgekd export` (every task) and `edgekd targets`: the options, parsed and handed to
`edgekd.export`, which reads the task from the student and writes one checked, atomic folder
per target (targets/*.yaml, each saying which tasks it applies to)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import List, Optional

import typer

from edgekd.cli.app import app, user_errors
from edgekd.cli.options import CAUSAL_LM, CLASSIFIERS, TEXT_CLASSIFICATION, default_help, given_options

_help = functools.partial(default_help, "export")


@app.command()
@user_errors
def export(
    ctx: typer.Context,
    student: Path = typer.Argument(
        ..., help="Student folder written by edgekd distill (or any save_pretrained folder)."),
    task: Optional[str] = typer.Option(
        None, help="text-classification, causal-lm or image-classification (default: read from the student's "
                   "config.json)."),
    target: Optional[List[str]] = typer.Option(
        None, help=_help("targets", "Target name from `edgekd targets` or a YAML file; repeatable.")),
    out: Path = typer.Option(..., help="Folder that receives one sub-folder per target."),
    data: Optional[Path] = typer.Option(
        None, help="Validation data (a file, a saved dataset or a hub id, as for distill): every artifact "
                   "is held to its target's budget on it (accuracy; causal LMs: perplexity). Without it "
                   "classifiers are checked on random batches, causal LMs on text sampled from the student."),
    split: Optional[str] = typer.Option(None, help="Split of a --data dataset (default: validation)."),
    calibration_data: Optional[Path] = typer.Option(
        None, help="Training samples for static int8 calibration (default: --data).",
        rich_help_panel=CLASSIFIERS),
    text_column: Optional[str] = typer.Option(None, help=_help("text_column", "Column with the input text.")),
    image_column: Optional[str] = typer.Option(
        None, help="Image classifiers: the column of a --data table holding image paths or bytes (default: "
                   "image, img, path, ...); a folder of class folders needs none."),
    label_column: Optional[str] = typer.Option(
        None, help=_help("label_column", "Column with labels; empty: agreement only."), rich_help_panel=CLASSIFIERS),
    text_pair_column: Optional[str] = typer.Option(
        None, help="Column with the second text of text-pair tasks.", rich_help_panel=TEXT_CLASSIFICATION),
    max_length: Optional[int] = typer.Option(
        None, help=_help("max_length", "Tokens per example after truncation (causal LMs: longest prompt + "
                                       "generated tokens).")),
    exporter: Optional[str] = typer.Option(
        None, help="Override the targets' exporter: torchscript, dynamo or optimum.",
        rich_help_panel=TEXT_CLASSIFICATION),
    max_perplexity_ratio: Optional[float] = typer.Option(
        None, help="Largest perplexity of a quantised export over the fp32 export's (default: the target's "
                   "budget: onnx-int8 1.1, onnx-int4 2); int8 keeps its worst-quantising MatMuls float "
                   "until it holds.", rich_help_panel=CAUSAL_LM),
    verify: Optional[List[str]] = typer.Option(
        None, help="Also run each ONNX/.ort artifact on another machine and compare it with this one: "
                 "arm64 runs it with the aarch64 onnxruntime under qemu emulation, on an older and a "
                 "recent ARM core (sets itself up on first use, about 250 MB, cached); repeatable.",
        rich_help_panel=CLASSIFIERS),
    with_tokenizer: Optional[bool] = typer.Option(
        None, help="Also write, beside each ONNX/.ort model, one that takes raw strings: for a text "
                    "classifier (single texts or pairs) its WordPiece tokenizer as ONNX Runtime Extensions "
                    "operators in front of the model; for a causal LM (byte-level BPE) a prompt encoder, "
                    "prompt_encoder.onnx. Checked token for token against the Python tokenizer; the app "
                    "registers the extensions library [default: no]."),
    overwrite: Optional[bool] = typer.Option(None, help=_help("overwrite", "Replace existing target folders.")),
):
    """Convert a student for each target (ONNX, .ort, .pte; fp32, fp16, int8, int4), each
    checked against PyTorch and, with --data, held to its target's budget. A classifier's
    logits are compared; a causal LM becomes ONNX with a key/value cache, its greedy tokens
    compared with PyTorch's and its quantised targets held to a perplexity budget. The same
    as `edgekd.export(...)` in Python.

    Example:

        edgekd export runs/student --target onnx-fp32 --target onnx-int8 --data val.csv --out runs/export

        edgekd export runs/student --target phone-arm64 --data val.csv --verify arm64 --out runs/export

        edgekd export runs/lm --target onnx-int8 --data held-out.txt --out runs/lm-export

        edgekd export runs/image-student --target onnx-int8 --target ort-mobile --data photos/val --out runs/img
    """
    import edgekd

    options = given_options(ctx)
    if "target" in options:
        options["targets"] = options.pop("target")
    edgekd.export(**options, log=typer.echo)


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
