"""`edgekd distill`: the options, parsed and handed to `edgekd.distill`, which reads the task
from the teacher, merges a recipe, the options given and the task's defaults, and trains."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import typer

from edgekd.cli.app import app, user_errors
from edgekd.tasks.shared import RANDOM_INIT_LR, SLICED_LR
from edgekd.cli.options import CAUSAL_LM, CLASSIFIERS, IMAGE_CLASSIFICATION, TEXT_CLASSIFICATION, default_help, given_options

_help = functools.partial(default_help, "distill")


@app.command()
@user_errors
def distill(
    ctx: typer.Context,
    task: Optional[str] = typer.Option(
        None, help="text-classification, causal-lm or image-classification (default: read from the teacher's "
                   "config.json)."),
    teacher: Optional[str] = typer.Option(
        None, help="Teacher folder or hub id: a sequence classifier, an image classifier or a causal LM "
                   "(also a .gguf file)."),
    data: Optional[Path] = typer.Option(
        None, help="Training data: .csv, .tsv, .jsonl, .parquet or .txt (one text per line), a folder "
                   "written by datasets.save_to_disk, or a hub dataset id (name or name:config)."),
    split: Optional[str] = typer.Option(None, help="Split of a --data dataset with several (default: train)."),
    out: Optional[Path] = typer.Option(None, help="Folder for the student (save_pretrained format)."),
    recipe: Optional[Path] = typer.Option(
        None, help="YAML file whose keys are these options (student-layers: 2); flags override it."),
    student_layers: Optional[str] = typer.Option(
        None, help="Student = teacher layers: a count or indices like 0,3,5 (text-classification default 2). "
                   "A count is evenly spaced for encoders (ALBERT: repeats of its shared layer); for "
                   "causal LMs it drops the contiguous block that changes the hidden state least."),
    student_config: Optional[str] = typer.Option(
        None, help="Student = the teacher shrunk to this shape: hidden=192,layers=2,heads=6,intermediate=768. "
                   "Sliced from the teacher's weights (hidden channels, heads and FFN neurons ranked by "
                   "activation on 512 training texts; BERT, RoBERTa, XLM-R, ELECTRA, DistilBERT, Llama, Qwen2, "
                   "Mistral); with --student-layers, those teacher layers are the ones sliced."),
    student_init: Optional[str] = typer.Option(
        None, help=_help("student_init", "How a --student-config student starts: slice (from the teacher's weights) "
                                         "or random (the configuration alone; embeddings of unchanged shape copied).")),
    student: Optional[str] = typer.Option(
        None, help="Student = this model folder or hub id (a plain encoder gets the teacher's labels); "
                   "with --student-layers, those layers of it."),
    latency_budget_ms: Optional[float] = typer.Option(
        None, help="Student = the most capable shape (layers x width, sliced from the teacher) whose "
                   "--budget-target export runs within this many ms here at batch 1 (causal LMs: per decoded "
                   "token); the candidates' timings are shown and cached per machine."),
    budget_target: Optional[str] = typer.Option(
        None, help=_help("budget_target", "The target a --latency-budget-ms is measured on.")),
    trim_vocab: Optional[bool] = typer.Option(
        None, help=_help("trim_vocab", "Keep only the tokens the training text uses (and the special ones): the "
                         "student's embedding (a causal LM's output head too) and tokenizer shrink, kept text tokenizes "
                         "exactly as before; the share of held-out words that tokenize differently is reported "
                         "(causal LMs: by edgekd bench).")),
    trim_vocab_min_count: Optional[int] = typer.Option(
        None, help="With --trim-vocab, keep a token only if the training text uses it at least this often "
                   "[default: 1]."),
    sequence_length: Optional[int] = typer.Option(
        None, help=_help("sequence_length", "Tokens per input when timing a --latency-budget-ms (causal LMs: the "
                                            "cache length).")),
    validation_data: Optional[Path] = typer.Option(
        None, help="Validation data for choosing the best epoch (default: a slice of --data).",
        rich_help_panel=CLASSIFIERS),
    validation_split: Optional[str] = typer.Option(
        None, help="Split of a --validation-data dataset (default: validation).", rich_help_panel=CLASSIFIERS),
    validation_fraction: Optional[float] = typer.Option(
        None, help=_help("validation_fraction", "Share of --data held out for validation when --validation-data "
                                                "is absent."), rich_help_panel=CLASSIFIERS),
    text_column: Optional[str] = typer.Option(None, help=_help("text_column", "Column with the input text.")),
    image_column: Optional[str] = typer.Option(
        None, help="Column of a --data table with image paths (relative to the table) or bytes (default: image, "
                   "img, path, ...); a folder of class folders (root/<label>/*.png) needs none.",
        rich_help_panel=IMAGE_CLASSIFICATION),
    crop_scale: Optional[float] = typer.Option(
        None, help=_help("crop_scale", "Random-resized crop keeping at least this share of each picture (0: off); "
                         "teacher and student see the same view, so the teacher runs every step."),
        rich_help_panel=IMAGE_CLASSIFICATION),
    flip: Optional[bool] = typer.Option(
        None, help=_help("flip", "Random horizontal flips (the same for teacher and student)."),
        rich_help_panel=IMAGE_CLASSIFICATION),
    mixup: Optional[float] = typer.Option(
        None, help=_help("mixup", "Mixup of picture pairs, Beta(a, a) with this a (0: off)."),
        rich_help_panel=IMAGE_CLASSIFICATION),
    label_column: Optional[str] = typer.Option(
        None, help=_help("label_column", "Column with labels (names or indices); empty rows learn from soft labels."),
        rich_help_panel=CLASSIFIERS),
    text_pair_column: Optional[str] = typer.Option(
        None, help="Column with the second text of text-pair tasks.", rich_help_panel=TEXT_CLASSIFICATION),
    prompt_column: Optional[str] = typer.Option(
        None, help="Column with a prompt, prepended to the text and not learnt.", rich_help_panel=CAUSAL_LM),
    epochs: Optional[int] = typer.Option(None, help=_help("epochs", "Passes over the training data.")),
    max_steps: Optional[int] = typer.Option(
        None, help=_help("max_steps", "Stop after this many optimiser steps (0: --epochs decides).")),
    lr: Optional[float] = typer.Option(
        None, help=_help("lr", "Peak learning rate (AdamW, warm-up then linear decay); a --student-config or "
                               f"--latency-budget-ms student: {SLICED_LR:g} sliced, {RANDOM_INIT_LR:g} random.")),
    batch_size: Optional[int] = typer.Option(
        None, help=_help("batch_size", "Examples per optimiser step, over all processes.")),
    gradient_accumulation: Optional[int] = typer.Option(
        None, help=_help("gradient_accumulation", "Run each step's batch as this many micro-batches (less memory, "
                                                  "same result)."), rich_help_panel=TEXT_CLASSIFICATION),
    warmup_fraction: Optional[float] = typer.Option(
        None, help=_help("warmup_fraction", "Share of steps with a rising learning rate.")),
    weight_decay: Optional[float] = typer.Option(None, help=_help("weight_decay", "AdamW decoupled weight decay.")),
    max_grad_norm: Optional[float] = typer.Option(
        None, help=_help("max_grad_norm", "Clip gradients to this global norm.")),
    temperature: Optional[float] = typer.Option(
        None, help=_help("temperature", "Softmax temperature of the KD term (causal LMs: inside the divergence).")),
    hard_label_weight: Optional[float] = typer.Option(
        None, help=_help("hard_label_weight", "Weight of cross-entropy on the hard labels (classes; next tokens for "
                                              "causal LMs); the rest goes to matching the teacher.")),
    hidden_mse_weight: Optional[float] = typer.Option(
        None, help=_help("hidden_mse_weight", "Weight of hidden-state (feature-map) MSE (TinyBERT)."),
        rich_help_panel=CLASSIFIERS),
    hidden_cosine_weight: Optional[float] = typer.Option(
        None, help=_help("hidden_cosine_weight", "Weight of hidden-state cosine loss (DistilBERT)."),
        rich_help_panel=TEXT_CLASSIFICATION),
    attention_weight: Optional[float] = typer.Option(
        None, help=_help("attention_weight", "Weight of attention-distribution KL (TinyBERT)."),
        rich_help_panel=CLASSIFIERS),
    minilm_weight: Optional[float] = typer.Option(
        None, help=_help("minilm_weight", "Weight of MiniLM-v2 q/k/v relation KL (last layers)."),
        rich_help_panel=TEXT_CLASSIFICATION),
    minilm_relation_heads: Optional[int] = typer.Option(
        None, help=_help("minilm_relation_heads", "Heads the MiniLM relations are split into (0: the teacher's head "
                                                  "count)."), rich_help_panel=TEXT_CLASSIFICATION),
    layer_map: Optional[str] = typer.Option(
        None, help="Student:teacher layer pairs like 0:1,1:5 (default: the layers cut from, else uniform).",
        rich_help_panel=CLASSIFIERS),
    divergence: Optional[str] = typer.Option(
        None, help=_help("divergence", "forward_kl, reverse_kl or jsd."), rich_help_panel=CAUSAL_LM),
    beta: Optional[float] = typer.Option(
        None, help=_help("beta", "JSD weight on the teacher (0 forward KL, 1 reverse KL)."), rich_help_panel=CAUSAL_LM),
    top_k: Optional[int] = typer.Option(
        None, help=_help("top_k", "Teacher tokens cached per position (0: run the teacher every step)."),
        rich_help_panel=CAUSAL_LM),
    freeze_embeddings: Optional[bool] = typer.Option(
        None, help="Keep the token embeddings and output head fixed [default: no].", rich_help_panel=CAUSAL_LM),
    max_length: Optional[int] = typer.Option(
        None, help=_help("max_length", "Tokens per example after truncation.")),
    seed: Optional[int] = typer.Option(None, help=_help("seed", "Random seed.")),
    device: Optional[str] = typer.Option(None, help=_help("device", "auto, cpu or cuda (bf16 autocast on cuda).")),
    compile: Optional[bool] = typer.Option(
        None, help=_help("compile", "torch.compile the student."), rich_help_panel=CLASSIFIERS),
    teacher_cache: Optional[bool] = typer.Option(
        None, help=_help("teacher_cache", "Store teacher outputs on disk once (fp16) and reuse them across epochs "
                                          "and runs."), rich_help_panel=CLASSIFIERS),
    cache_dir: Optional[Path] = typer.Option(
        None, help="Where teacher caches live (default $EDGEKD_CACHE/teacher-outputs; causal-lm: "
                   "$EDGEKD_CACHE/lm-top-k)."),
    checkpoint_every: Optional[int] = typer.Option(
        None, help=_help("checkpoint_every", "Steps between checkpoints in OUT.checkpoints/, also at epoch ends "
                                             "(0: no checkpoints).")),
    allow_poor_student: Optional[bool] = typer.Option(
        None, help=_help("allow_poor_student", "Keep a student no better than guessing (while the teacher is) "
                         "without failing: by default that run exits with code 2. Guessing is the most common label "
                         "(validation accuracy) for classifiers, the training text's token frequencies (next-token "
                         "loss) for causal LMs.")),
    resume: Optional[bool] = typer.Option(
        None, help=_help("resume", "Continue from the checkpoint of an interrupted run.")),
    overwrite: Optional[bool] = typer.Option(
        None, help=_help("overwrite", "Replace --out (and its checkpoints) if they exist.")),
    quiet: Optional[bool] = typer.Option(None, help=_help("quiet", "No progress bars.")),
    trust_remote_code: Optional[bool] = typer.Option(
        None, help=_help("trust_remote_code", "Allow model folders to run their own Python code (only for sources "
                                              "you trust)."), rich_help_panel=CLASSIFIERS),
):
    """Train a compact student to imitate a teacher: a text classifier (soft labels, hard
    labels, hidden states, attention, MiniLM relations: each loss by its weight), an image
    classifier (soft labels, feature maps, the same augmented view for both) or a decoder
    language model (next-token KL or JSD, top-k teacher cache). The task is read from the
    teacher; an option left out takes that task's default (shown per task below). The same
    as `edgekd.distill(...)` in Python, whose keywords are these options.

    Example:

        edgekd distill --teacher runs/teacher --data train.csv --student-layers 2 --out runs/student

        edgekd distill --recipe examples/tinybert.yaml --teacher runs/teacher --data train.csv --out runs/s

        edgekd distill --teacher runs/teacher --data train.csv --student-config hidden=192,layers=2,intermediate=768 --out runs/sliced

        edgekd distill --teacher runs/teacher --data train.csv --student-config hidden=192,layers=2 --trim-vocab --out runs/small

        edgekd distill --teacher runs/teacher --data train.csv --latency-budget-ms 3 --out runs/sized

        edgekd distill --teacher HuggingFaceTB/SmolLM2-360M --task causal-lm --data text.txt --student-layers 8 --out runs/lm

        torchrun --nproc_per_node 2 -m edgekd distill --teacher runs/teacher --data train.csv --out runs/s
    """
    import edgekd

    edgekd.distill(**given_options(ctx), log=typer.echo)
