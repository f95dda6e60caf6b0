"""`edgekd distill`: options (or a recipe of the same options) -> a config -> one stage.

The task is read from the teacher (edgekd/tasks) unless --task says it. Options shared by
both tasks have one name (--epochs, --max-steps, --hard-label-weight, ...); an option that
only the other task reads is refused by name rather than silently ignored. A text
classifier gets a DistillConfig for edgekd.distill.train; a causal LM an LMDistillConfig
for edgekd.lm.train, built from the options given (the rest keep its own defaults).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import typer

from edgekd.cli.app import app, user_errors
from edgekd.cli.options import CAUSAL_LM, IMAGE_CLASSIFICATION, TEXT_CLASSIFICATION, given_options, refuse_other_tasks
from edgekd.errors import UserError, exclusive, first_process

# Options only one task reads (the parameter names); every other option serves both.
RANDOM_INIT_LR = 1e-3  # the default --lr of a randomly initialised --student-config student
# ... and of a student sliced from the teacher's width: benchmarks/shrink.py measured 3e-4 2.6 points
# (95% CI +0.4 to +4.8) above the layer cut's 1e-4 on the demo's 2x192 student
SLICED_LR = 3e-4
TEXT_ONLY_OPTIONS = (
    "validation_data", "validation_split", "validation_fraction", "label_column", "text_pair_column",
    "gradient_accumulation", "hidden_mse_weight", "hidden_cosine_weight", "attention_weight",
    "minilm_weight", "minilm_relation_heads", "layer_map", "compile", "teacher_cache", "trust_remote_code")
CAUSAL_LM_ONLY_OPTIONS = ("prompt_column", "divergence", "beta", "top_k", "freeze_embeddings")
IMAGE_ONLY_OPTIONS = ("image_column", "crop_scale", "flip", "mixup")
NOT_FOR_IMAGES = ("text_column", "text_pair_column", "hidden_cosine_weight", "minilm_weight", "minilm_relation_heads",
                  "max_length", "trim_vocab", "trim_vocab_min_count", "latency_budget_ms", "budget_target",
                  "sequence_length", "student_init", "gradient_accumulation")


@app.command()
@user_errors
def distill(
    ctx: typer.Context,
    task: Optional[str] = typer.Option(
        None, help="text-classification, causal-lm or image-classification (default: read from the teacher's "
                   "config.json)."),
    teacher: Optional[str] = typer.Option(
        None, help="Teacher folder or hub id: a sequence classifier or a causal LM (also a .gguf file)."),
    data: Optional[Path] = typer.Option(
        None, help="Training data: .csv, .tsv, .jsonl, .parquet or .txt (one text per line), a folder "
                   "written by datasets.save_to_disk, or a hub dataset id (name or name:config)."),
    split: Optional[str] = typer.Option(
        None, help="Split of a --data dataset with several (default: train)."),
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
    student_init: str = typer.Option(
        "slice", help="How a --student-config student starts: slice (from the teacher's weights) or random "
                      "(the configuration alone; embeddings of unchanged shape copied)."),
    student: Optional[str] = typer.Option(
        None, help="Student = this model folder or hub id (a plain encoder gets the teacher's labels); "
                   "with --student-layers, those layers of it."),
    latency_budget_ms: Optional[float] = typer.Option(
        None, help="Student = the most capable shape (layers x width, sliced from the teacher) whose "
                   "--budget-target export runs within this many ms here at batch 1 (causal LMs: per decoded "
                   "token); the candidates' timings are shown and cached per machine."),
    budget_target: str = typer.Option("onnx-int8", help="The target a --latency-budget-ms is measured on."),
    trim_vocab: bool = typer.Option(
        False, help="Keep only the tokens the training text uses (and the special ones): the student's embedding "
                    "(a causal LM's output head too) and tokenizer shrink, kept text tokenizes exactly as before; "
                    "the share of held-out words that tokenize differently is reported (causal LMs: by edgekd bench)."),
    trim_vocab_min_count: int = typer.Option(
        1, help="With --trim-vocab, keep a token only if the training text uses it at least this often."),
    sequence_length: int = typer.Option(
        128, help="Tokens per input when timing a --latency-budget-ms (causal LMs: the cache length)."),
    validation_data: Optional[Path] = typer.Option(
        None, help="Validation data for choosing the best epoch (default: a slice of --data).",
        rich_help_panel=TEXT_CLASSIFICATION),
    validation_split: Optional[str] = typer.Option(
        None, help="Split of a --validation-data dataset (default: validation).",
        rich_help_panel=TEXT_CLASSIFICATION),
    validation_fraction: float = typer.Option(
        0.1, help="Share of --data held out for validation when --validation-data is absent.",
        rich_help_panel=TEXT_CLASSIFICATION),
    text_column: str = typer.Option("text", help="Column with the input text."),
    image_column: Optional[str] = typer.Option(
        None, help="Column of a --data table with image paths (relative to the table) or bytes (default: image, "
                   "img, path, ...); a folder of class folders (root/<label>/*.png) needs none.",
        rich_help_panel=IMAGE_CLASSIFICATION),
    crop_scale: float = typer.Option(
        0.0, help="Random-resized crop keeping at least this share of each picture (0: off); teacher and "
                  "student see the same view, so the teacher runs every step.", rich_help_panel=IMAGE_CLASSIFICATION),
    flip: bool = typer.Option(False, help="Random horizontal flips (the same for teacher and student).",
                              rich_help_panel=IMAGE_CLASSIFICATION),
    mixup: float = typer.Option(0.0, help="Mixup of picture pairs, Beta(a, a) with this a (0: off).",
                                rich_help_panel=IMAGE_CLASSIFICATION),
    label_column: str = typer.Option(
        "label", help="Column with labels (names or indices); empty rows learn from soft labels.",
        rich_help_panel=TEXT_CLASSIFICATION),
    text_pair_column: Optional[str] = typer.Option(
        None, help="Column with the second text of text-pair tasks.", rich_help_panel=TEXT_CLASSIFICATION),
    prompt_column: Optional[str] = typer.Option(
        None, help="Column with a prompt, prepended to the text and not learnt.", rich_help_panel=CAUSAL_LM),
    epochs: int = typer.Option(3, help="Passes over the training data."),
    max_steps: int = typer.Option(0, help="Stop after this many optimiser steps (0: --epochs decides)."),
    lr: float = typer.Option(
        1e-4, help="Peak learning rate (AdamW, warm-up then linear decay; causal-lm default 3e-4; a --student-config "
                   "or --latency-budget-ms student: 3e-4 sliced, 1e-3 random)."),
    batch_size: int = typer.Option(
        16, help="Examples per optimiser step, over all processes (causal-lm default 8)."),
    gradient_accumulation: int = typer.Option(
        1, help="Run each step's batch as this many micro-batches (less memory, same result).",
        rich_help_panel=TEXT_CLASSIFICATION),
    warmup_fraction: float = typer.Option(0.1, help="Share of steps with a rising learning rate."),
    weight_decay: float = typer.Option(0.01, help="AdamW decoupled weight decay."),
    max_grad_norm: float = typer.Option(1.0, help="Clip gradients to this global norm."),
    temperature: float = typer.Option(
        2.0, help="Softmax temperature of the KD term (causal-lm: inside the divergence, default 1.0)."),
    hard_label_weight: float = typer.Option(
        0.5, help="Weight of cross-entropy on the hard labels (classes; next tokens for causal LMs); "
                  "the rest goes to matching the teacher."),
    hidden_mse_weight: float = typer.Option(0.0, help="Weight of hidden-state MSE (TinyBERT).",
                                            rich_help_panel=TEXT_CLASSIFICATION),
    hidden_cosine_weight: float = typer.Option(0.0, help="Weight of hidden-state cosine loss (DistilBERT).",
                                               rich_help_panel=TEXT_CLASSIFICATION),
    attention_weight: float = typer.Option(0.0, help="Weight of attention-distribution KL (TinyBERT).",
                                           rich_help_panel=TEXT_CLASSIFICATION),
    minilm_weight: float = typer.Option(0.0, help="Weight of MiniLM-v2 q/k/v relation KL (last layers).",
                                        rich_help_panel=TEXT_CLASSIFICATION),
    minilm_relation_heads: int = typer.Option(
        0, help="Heads the MiniLM relations are split into (0: the teacher's head count).",
        rich_help_panel=TEXT_CLASSIFICATION),
    layer_map: str = typer.Option(
        "", help="Student:teacher layer pairs like 0:1,1:5 (default: the layers cut from, else uniform).",
        rich_help_panel=TEXT_CLASSIFICATION),
    divergence: str = typer.Option("forward_kl", help="forward_kl, reverse_kl or jsd.", rich_help_panel=CAUSAL_LM),
    beta: float = typer.Option(0.5, help="JSD weight on the teacher (0 forward KL, 1 reverse KL).",
                               rich_help_panel=CAUSAL_LM),
    top_k: int = typer.Option(64, help="Teacher tokens cached per position (0: run the teacher every step).",
                              rich_help_panel=CAUSAL_LM),
    freeze_embeddings: bool = typer.Option(False, help="Keep the token embeddings and output head fixed.",
                                           rich_help_panel=CAUSAL_LM),
    max_length: int = typer.Option(128, help="Tokens per example after truncation."),
    seed: int = typer.Option(0, help="Random seed."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (bf16 autocast on cuda)."),
    compile: bool = typer.Option(False, help="torch.compile the student.", rich_help_panel=TEXT_CLASSIFICATION),
    teacher_cache: bool = typer.Option(
        True, help="Store teacher outputs on disk once (fp16) and reuse them across epochs and runs.",
        rich_help_panel=TEXT_CLASSIFICATION),
    cache_dir: Optional[Path] = typer.Option(
        None, help="Where teacher caches live (default $EDGEKD_CACHE/teacher-outputs; causal-lm: "
                   "$EDGEKD_CACHE/lm-top-k)."),
    checkpoint_every: int = typer.Option(
        200, help="Steps between checkpoints in OUT.checkpoints/, also at epoch ends (0: no checkpoints; "
                  "causal-lm default 50)."),
    allow_poor_student: bool = typer.Option(
        False, help="Keep a student no better than guessing (while the teacher is) without failing: by default that "
                    "run exits with code 2. Guessing is the most common label (validation accuracy) for classifiers, "
                    "the training text's token frequencies (next-token loss) for causal LMs."),
    resume: bool = typer.Option(False, help="Continue from the checkpoint of an interrupted run."),
    overwrite: bool = typer.Option(False, help="Replace --out (and its checkpoints) if they exist."),
    quiet: bool = typer.Option(False, help="No progress bars."),
    trust_remote_code: bool = typer.Option(
        False, help="Allow model folders to run their own Python code (only for sources you trust).",
        rich_help_panel=TEXT_CLASSIFICATION),
):
    """Train a compact student to imitate a teacher: a text classifier (soft labels, hard
    labels, hidden states, attention, MiniLM relations: each loss by its weight) or a decoder
    language model (next-token KL or JSD, top-k teacher cache). The task is read from the
    teacher.

    Example:

        edgekd distill --teacher runs/teacher --data train.csv --student-layers 2 --out runs/student

        edgekd distill --recipe examples/tinybert.yaml --teacher runs/teacher --data train.csv --out runs/s

        edgekd distill --teacher runs/teacher --data train.csv --student-config hidden=192,layers=2,intermediate=768 --out runs/sliced

        edgekd distill --teacher runs/teacher --data train.csv --student-config hidden=192,layers=2 --trim-vocab --out runs/small

        edgekd distill --teacher runs/teacher --data train.csv --latency-budget-ms 3 --out runs/sized

        edgekd distill --teacher HuggingFaceTB/SmolLM2-360M --task causal-lm --data text.txt --student-layers 8 --out runs/lm

        torchrun --nproc_per_node 2 -m edgekd distill --teacher runs/teacher --data train.csv --out runs/s
    """
    from edgekd.tasks import resolve

    options, given = dict(ctx.params), given_options(ctx)
    if recipe is not None:
        overrides = recipe_overrides(recipe, ctx)
        options.update(overrides)
        given |= set(overrides)
    task = resolve(options.pop("task"), options["teacher"], hub=True)
    refuse_other_tasks(given, task, text_only=TEXT_ONLY_OPTIONS, causal_lm_only=CAUSAL_LM_ONLY_OPTIONS,
                       image_only=IMAGE_ONLY_OPTIONS, not_for_images=NOT_FOR_IMAGES)
    _require(options)
    # one writer per --out, from the first moment: a second run fails at once, not after training
    with exclusive(Path(options["out"])) if first_process() else contextlib.nullcontext():
        if task == "causal-lm":
            run_causal_lm(options, given=given)
        elif task == "image-classification":
            run_images(options, given=given)
        else:
            for name in (*CAUSAL_LM_ONLY_OPTIONS, *IMAGE_ONLY_OPTIONS):
                options.pop(name)
            run(**options, given=given)


def _require(options: dict) -> None:
    for name in ("teacher", "data", "out"):
        if options[name] is None:
            raise UserError(f"--{name} is required (give it as a flag or in the --recipe file)")


def run_causal_lm(options: dict, *, given: set[str]) -> None:
    """A causal LM: an LMDistillConfig from the options given (the rest keep its defaults),
    the student made from the teacher, the causal-LM stage."""
    from dataclasses import fields

    from edgekd.config import LMDistillConfig
    from edgekd.lm.data import encode_texts, read_texts
    from edgekd.lm.models import load_causal_lm, make_lm_student, probe_batch, shared_vocabulary
    from edgekd.lm.train import distill_lm, poor_student
    from edgekd.vocab import describe

    names = {f.name for f in fields(LMDistillConfig)}
    values = {name: options[name] for name in names & given}
    if "freeze_embeddings" in given:
        values["train_embeddings"] = not options["freeze_embeddings"]
    config = LMDistillConfig(**values)
    out = Path(options["out"])
    check_writable(out, overwrite=options["overwrite"] or options["resume"])
    texts, prompts = read_texts(options["data"], text_column=options["text_column"],
                                prompt_column=options["prompt_column"], split=options["split"],
                                default_split="train")
    teacher_model, tokenizer = load_causal_lm(options["teacher"])
    examples = encode_texts(texts, tokenizer, max_length=config.max_length, prompts=prompts)
    if options["latency_budget_ms"] is not None:
        options["student_config"] = _sized(
            teacher_model, tokenizer, task="causal-lm", budget_ms=options["latency_budget_ms"],
            target=options["budget_target"], sequence_length=options["sequence_length"],
            given=(options["student_layers"], options["student_config"], options["student"]))
    student_model, student_tokenizer = make_lm_student(
        teacher_model, tokenizer, layers=options["student_layers"], config_spec=options["student_config"],
        model=options["student"], seed=config.seed, probe=probe_batch(examples),  # the probe picks the layers a count drops
        init=options["student_init"])
    vocabulary = shared_vocabulary(teacher_model, tokenizer, student_model, student_tokenizer)
    trim = _trim(options["trim_vocab"], options["trim_vocab_min_count"], given=given,
                 texts=list(texts) + list(prompts or []), held_out=None, tokenizer=student_tokenizer,
                 model_config=student_model.config)
    result = distill_lm(teacher=teacher_model, student=student_model, tokenizer=student_tokenizer,
                        train=examples, config=config, out=out, vocabulary=vocabulary, trim=trim,
                        overwrite=options["overwrite"], show_progress=not options["quiet"],
                        resume=options["resume"], cache_root=Path(options["cache_dir"]) if options["cache_dir"] else None)
    if result.student_dir is None:  # rank 0 alone reports under torchrun
        return
    if result.vocabulary:
        typer.echo(f"student: {describe(result.vocabulary)} (edgekd bench reports held-out coverage)")
    typer.echo(f"student written to {result.student_dir} ({result.steps} steps, final loss "
               f"{result.final_loss:.4f}, {result.seconds:.0f}s; teacher cache {result.teacher_seconds:.0f}s"
               f"{f', {result.cache_bytes_per_token:.0f} B/token' if result.cache_bytes_per_token else ''})")
    poor = poor_student(student_model, teacher_model, examples, vocabulary=vocabulary)
    _fail_if_poor(poor, folder=result.student_dir, allow=options["allow_poor_student"])


def run_images(options: dict, *, given: set[str]) -> None:
    """An image classifier: an ImageDistillConfig, images read with the teacher's labels, the
    student made from the teacher (or given), the image stage (edgekd/vision/train.py)."""
    from dataclasses import fields

    from edgekd.data import split as split_rows
    from edgekd.vision.data import load_images, num_channels, probe_batches
    from edgekd.vision.models import load_image_classifier, make_image_student, slices_width
    from edgekd.vision.train import ImageDistillConfig, distill_images

    names = {f.name for f in fields(ImageDistillConfig)}
    config = ImageDistillConfig(**{name: options[name] for name in names if name in options})
    out = Path(options["out"])
    check_writable(out, overwrite=options["overwrite"] or options["resume"])
    teacher_model, processor = load_image_classifier(options["teacher"], trust_remote_code=options["trust_remote_code"])
    spec = options["student_config"]
    sliced = bool(spec) and slices_width(teacher_model, spec)
    if config.lr == 1e-4 and "lr" not in given and spec:
        from edgekd.slicing import WIDTH_KEYS
        from edgekd.vision.models import parse_image_spec

        config = _student_lr(config, random_init=not sliced,
                             reshaped=any(key in parse_image_spec(spec) for key in WIDTH_KEYS))
    label2id = label2id_of(teacher_model)
    read = dict(label2id=label2id, image_column=options["image_column"], label_column=options["label_column"] or None,
                show_progress=not options["quiet"])
    train = load_images(options["data"], split=options["split"], default_split="train", **read)
    if options["validation_data"] is not None:
        validation = load_images(options["validation_data"], split=options["validation_split"],
                                 default_split="validation", **read)
    elif config.validation_fraction > 0 and len(train) >= 20:
        validation, train = split_rows(train, fractions=[config.validation_fraction, 1.0], seed=config.seed)
    else:
        validation = None
    student_model, student_processor = make_image_student(
        teacher_model, processor, layers=options["student_layers"], config_spec=options["student_config"],
        model=options["student"], seed=config.seed, trust_remote_code=options["trust_remote_code"],
        probe=probe_batches(train, processor, channels=num_channels(teacher_model)) if sliced else None)
    result = distill_images(teacher=teacher_model, teacher_processor=processor, student=student_model,
                            processor=student_processor, train=train, validation=validation, config=config, out=out,
                            overwrite=options["overwrite"], show_progress=not options["quiet"],
                            resume=options["resume"], cache_dir=options["cache_dir"], log=typer.echo)
    if result.student_dir is None:
        return
    _report_classifier(result, validation, unit="images", allow_poor_student=options["allow_poor_student"])


def _fail_if_poor(poor: str | None, *, folder: Path, allow: bool) -> None:
    """The last line of a run whose student learnt nothing useful, and exit code 2 (unless allowed)."""
    from edgekd.errors import GateFailed

    if poor and not allow:
        raise GateFailed(f"the student learnt nothing useful: {poor}; it is in {folder}, but raise --lr "
                         f"(random weights: try {RANDOM_INIT_LR:g}), train longer or slice the student from the "
                         "teacher (--student-config without --student-init random); --allow-poor-student keeps it "
                         "without failing")
    if poor:
        typer.echo(f"warning: the student learnt nothing useful: {poor} (kept: --allow-poor-student)")


def _reshaped_student_lr(config, teacher_model, spec: str, init: str):
    """A --student-config student's default learning rate: random weights need a larger step than
    weights that already compute something, and a student sliced to a new width a larger one
    than a layer cut at the teacher's width (which keeps --lr's default)."""
    from edgekd.models import parse_student_config
    from edgekd.slicing import WIDTH_KEYS, family_of

    reshaped = any(key in parse_student_config(spec) for key in WIDTH_KEYS)
    random_init = init == "random" or (reshaped and family_of(teacher_model) is None)
    return _student_lr(config, random_init=random_init, reshaped=reshaped)


def _student_lr(config, *, random_init: bool, reshaped: bool):
    """The default --lr of a student with random weights, or sliced to a new width (text and images alike)."""
    from dataclasses import replace

    if not (random_init or reshaped):
        return config
    lr = RANDOM_INIT_LR if random_init else SLICED_LR
    typer.echo(f"student: {'random weights' if random_init else 'sliced from the teacher'}, so --lr {lr:g} "
               "(pass --lr to choose another)")
    return replace(config, lr=lr)


def _trim(trim_vocab: bool, min_count: int, *, given: set[str], texts: list[str], held_out: list[str] | None,
          tokenizer, model_config):
    """The VocabTrim --trim-vocab asks for (edgekd/vocab.py), checked before training, or None."""
    from edgekd.vocab import plan_trim

    if not trim_vocab:
        if "trim_vocab_min_count" in given:
            raise UserError("--trim-vocab-min-count only applies with --trim-vocab; add --trim-vocab or drop it")
        return None
    if min_count < 1:
        raise UserError(f"--trim-vocab-min-count must be at least 1, got {min_count}")
    # a tokenizer that cannot be trimmed exactly fails here, before training
    return plan_trim(tokenizer, texts, held_out=held_out, min_count=min_count, model_config=model_config)


def _all_texts(dataset) -> list[str]:
    """Every text of a classification dataset, the second text of pairs included."""
    return list(dataset.texts) + list(dataset.text_pairs or [])


def _sized(teacher_model, tokenizer, *, task: str, budget_ms: float, target: str, sequence_length: int,
           given: tuple) -> str:
    """The --student-config a --latency-budget-ms chooses (edgekd/sizing.py)."""
    from edgekd.sizing import sized_spec

    if any(given):
        raise UserError("--latency-budget-ms chooses the student's shape itself; drop --student-layers, "
                        "--student-config and --student, or drop --latency-budget-ms")
    return sized_spec(teacher_model, tokenizer, task=task, budget_ms=budget_ms, target_name=target,
                      sequence_length=sequence_length, show=typer.echo)


def run(*, teacher, data, split, out, recipe, student_layers, student_config, student_init, student, validation_data,
        validation_split, validation_fraction, text_column, label_column, text_pair_column, max_length,
        seed, cache_dir, resume, overwrite, quiet, trust_remote_code=False, allow_poor_student=False,
        latency_budget_ms=None, budget_target="onnx-int8", sequence_length=128, trim_vocab=False,
        trim_vocab_min_count=1, given=frozenset(), **training) -> None:
    """The command after the recipe is merged: load, make the student, call the stage."""
    from edgekd.config import DistillConfig
    from edgekd.data import Columns, load_file, sample_batches, split as split_rows
    from edgekd.distill.train import distill as run_distill
    from edgekd.models import load_classifier, make_student
    from edgekd.vocab import describe

    config = DistillConfig(max_length=max_length, seed=seed, validation_fraction=validation_fraction,
                           **training)
    columns = Columns(text=text_column, label=label_column or None, text_pair=text_pair_column)
    check_writable(Path(out), overwrite=overwrite or resume)
    teacher_model, tokenizer = load_classifier(teacher, role="teacher",
                                               trust_remote_code=trust_remote_code)
    if latency_budget_ms is not None:
        student_config = _sized(teacher_model, tokenizer, task="text-classification", budget_ms=latency_budget_ms,
                                target=budget_target, sequence_length=sequence_length,
                                given=(student_layers, student_config, student))
    if not (student_layers or student_config or student):
        student_layers = "2"
    if student_config and "lr" not in given:
        config = _reshaped_student_lr(config, teacher_model, student_config, student_init)
    label2id = label2id_of(teacher_model)
    train = load_file(data, columns=columns, label2id=label2id, split=split, default_split="train")
    probe = (sample_batches(train, tokenizer, max_length=max_length, seed=seed)
             if student_config and student_init == "slice" else None)  # what a sliced width is ranked on
    student_model, student_tokenizer = make_student(
        teacher_model, tokenizer, layers=student_layers, config_spec=student_config, model=student, seed=seed,
        init=student_init, probe=probe)
    if validation_data is not None:
        validation = load_file(validation_data, columns=columns, label2id=label2id, split=validation_split,
                               default_split="validation")
    elif config.validation_fraction > 0 and len(train) >= 20:
        validation, train = split_rows(train, fractions=[config.validation_fraction, 1.0], seed=seed)
    else:
        validation = None
    trim = _trim(trim_vocab, trim_vocab_min_count, given=given, texts=_all_texts(train),
                 held_out=_all_texts(validation) if validation is not None else None, tokenizer=student_tokenizer,
                 model_config=student_model.config)
    result = run_distill(teacher=teacher_model, student=student_model, tokenizer=student_tokenizer,
                         train=train, validation=validation, config=config, out=Path(out),
                         overwrite=overwrite, show_progress=not quiet, resume=resume, cache_dir=cache_dir, trim=trim)
    if result.student_dir is None:  # not rank 0 under torchrun: rank 0 reports
        return
    if result.vocabulary:
        typer.echo(f"student: {describe(result.vocabulary)}")
    _report_classifier(result, validation, unit="samples", allow_poor_student=allow_poor_student)


def _report_classifier(result, validation, *, unit: str, allow_poor_student: bool) -> None:
    """A classifier run's last line (text or images), and exit code 2 for a student no better than guessing."""
    from edgekd.metrics import near_chance

    summary = "  ".join(f"{k} {v:.4f}" for k, v in result.validation.items())
    typer.echo(f"student written to {result.student_dir} (best epoch {result.best_epoch}"
               f"{'; validation ' + summary if summary else ''}; {result.steps} steps, "
               f"{result.samples_per_second:.1f} {unit}/s; {result.seconds:.0f}s)")
    poor = validation is not None and near_chance(result.validation.get("accuracy", float("nan")),
                                                  teacher_accuracy=result.teacher_validation.get("accuracy"),
                                                  labels=validation.labels)
    _fail_if_poor(poor or None, folder=result.student_dir, allow=allow_poor_student)


# ---------------------------------------------------------------------------- recipes

def recipe_values(path: Path, command) -> dict:
    """A recipe's values, keyed by parameter name and converted like the flags would be.

    Keys must be the command's option names exactly as typed on the command line
    without the dashes in front (`student-layers`, `hidden-mse-weight`).
    """
    import yaml

    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UserError(f"cannot read recipe {path}: {error.strerror}; pass an existing YAML file") from error
    except yaml.YAMLError as error:
        raise UserError(f"recipe {path} is not valid YAML ({str(error).splitlines()[0]}); fix the file") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"recipe {path} must be a mapping of option: value, got {type(loaded).__name__}")
    # typer ships its own copy of click, so options are recognised by shape, not class.
    options = {param.opts[0].lstrip("-"): param for param in command.params
               if param.param_type_name == "option" and param.name != "recipe"}
    values = {}
    for key, value in loaded.items():
        param = options.get(str(key))
        if param is None:
            hint = str(key).replace("_", "-")
            raise UserError(f"recipe {path}: '{key}' is not a distill option"
                            f"{f'; did you mean {hint}?' if hint in options else ''} "
                            f"(see edgekd distill --help)")
        values[param.name] = _convert(param, value, path, str(key), context=typer.Context(command))
    return values


def _convert(param, value, path: Path, key: str, *, context):
    """The value as the flag's parser would have made it (paths become Path objects)."""
    if value is None:
        return None
    try:
        return param.process_value(context, value)
    except typer.BadParameter as error:
        raise UserError(f"recipe {path}: {key}: {value!r}: {error.message}") from error


def recipe_overrides(path: Path, ctx: typer.Context) -> dict:
    """Recipe values for the options not given on the command line (flags win)."""
    values = recipe_values(path, ctx.command)
    return {name: value for name, value in values.items()
            if ctx.get_parameter_source(name).name in ("DEFAULT", "DEFAULT_MAP")}


def label2id_of(model) -> dict[str, int]:
    return {str(name): int(i) for i, name in model.config.id2label.items()}


def check_writable(out: Path, *, overwrite: bool) -> None:
    """Fail before any work when --out exists (without --overwrite) or cannot be created."""
    import os

    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output folder {out} already exists; pass --overwrite or choose another --out")
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if parent != out and not parent.is_dir():
        raise UserError(f"cannot create {out}: {parent} is a file, not a folder; choose another --out")
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write under {parent} (permission denied); choose a writable --out")
