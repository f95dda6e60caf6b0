"""The Python API: `edgekd.distill`, `edgekd.export` and `edgekd.bench`.

Each function's keyword names are the command line's option names, underscored; the command
line parses, calls exactly these and prints. An option left at None takes its default: the
task's own (its frozen config in edgekd/config.py for training, `DEFAULTS` and the task's
`defaults` for the rest), so one rule merges a recipe, the options given and the defaults for
every task. Besides paths they take what a notebook holds: a (model, tokenizer or image
processor) pair for a teacher, a `datasets.Dataset` or a list of dicts for data. Failures
raise `edgekd.UserError` (a failed gate `edgekd.GateFailed`), with one line saying what to do.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import typing
from pathlib import Path
from types import UnionType
from typing import Callable, Sequence, Union

from edgekd.errors import UserError, exclusive, first_process, refuse_overlap
from edgekd.results import Report, Student
from edgekd.tasks import TASKS, check_task, refuse_options_of_other_tasks, resolve, task_of_config
from edgekd.tasks import causal_lm, image_classification, text_classification

Log = Callable[[str], None]
PathLike = Union[str, Path]

# the pipeline of each task: distill, export, bench (and the export summary it prints)
PIPELINES = {text_classification.NAME: text_classification, causal_lm.NAME: causal_lm,
             image_classification.NAME: image_classification}

# defaults of the options that no config holds; a task's own differ in its `defaults`
DEFAULTS = {
    "distill": dict(student_init="slice", budget_target="onnx-int8", sequence_length=128, text_column="text",
                    label_column="label", trim_vocab=False, trim_vocab_max_drop=1.0, augment=0, allow_poor_student=False,
                    resume=False, overwrite=False, quiet=False, trust_remote_code=False, fine_tune_teacher=False),
    "export": dict(targets=("onnx-int8",), text_column="text", label_column="label", max_length=128, verify=(),
                   with_tokenizer=False, overwrite=False, quiet=False),
    "demo": dict(out="runs/demo", max_length=128, repeats=50, student_layers="20", overwrite=False, quiet=False),
    "bench": dict(text_column="text", label_column="label", max_length=128, sequence_length=(128,), repeats=50,
                  throughput_batch=32, memory=True, roofline=True, plot=True, new_tokens=64, rounds=3,
                  quiet=False, trust_remote_code=False),
}


def _libraries_quiet(function):
    """Run an API call with library chatter (warnings, logs, bars) silenced, restored after it."""
    @functools.wraps(function)
    def quiet(*args, **kwargs):
        from edgekd.progress import libraries_quiet

        with libraries_quiet():
            return function(*args, **kwargs)

    return quiet


def _resolved(function: Callable, task: str, given: dict) -> dict:
    """Every option of `function` by name: given, else the task's default, else the command's,
    else None (the task's config holds it)."""
    command = function.__name__
    defaults = {**DEFAULTS[command], **TASKS[task].defaults.get(command, {})}
    return {name: given[name] if name in given else defaults.get(name)
            for name in inspect.signature(function).parameters if name != "log"}


def _given(values: dict) -> dict:
    return {name: value for name, value in values.items() if value is not None and name != "log"}


def _task_of(task: str | None, *sources, hub: bool = False) -> str:
    """--task checked against the models, else the task they hold (a loaded model's config tells)."""
    loaded = [source for source in sources if isinstance(source, tuple)]
    if loaded:
        detected = task_of_config(loaded[0][0].config.to_dict())
        if task is not None and detected is not None and check_task(task).name != detected:
            raise UserError(f"the teacher given is a {detected} model, not a {task} one; "
                            f"pass task='{detected}' (or leave it out)")
        return task or detected or text_classification.NAME
    return resolve(task, *[source for source in sources if source is not None], hub=hub)


# ---------------------------------------------------------------------------- distill

@_libraries_quiet
def distill(*, teacher: str | tuple | None = None, data: Path | str | list | None = None,
            out: PathLike | None = None, task: str | None = None, split: str | None = None,
            fine_tune_teacher: bool | None = None,
            recipe: PathLike | None = None, student_layers: str | None = None, student_config: str | None = None,
            student_init: str | None = None, student: str | None = None,
            latency_budget_ms: float | None = None, budget_target: str | None = None,
            trim_vocab: bool | None = None, trim_vocab_min_count: int | None = None,
            trim_vocab_max_drop: float | None = None, augment: int | None = None,
            sequence_length: int | None = None, validation_data: Path | str | list | None = None,
            validation_split: str | None = None,
            validation_fraction: float | None = None, validation_rows: int | None = None,
            text_column: str | None = None,
            image_column: str | None = None, crop_scale: float | None = None, flip: bool | None = None,
            mixup: float | None = None, label_column: str | None = None, text_pair_column: str | None = None,
            prompt_column: str | None = None, epochs: int | None = None, max_steps: int | None = None,
            lr: float | None = None, batch_size: int | None = None, gradient_accumulation: int | None = None,
            warmup_fraction: float | None = None, weight_decay: float | None = None,
            max_grad_norm: float | None = None, temperature: float | None = None,
            hard_label_weight: float | None = None, hidden_mse_weight: float | None = None,
            hidden_cosine_weight: float | None = None, attention_weight: float | None = None,
            minilm_weight: float | None = None, minilm_relation_heads: int | None = None,
            layer_map: str | None = None, divergence: str | None = None, beta: float | None = None,
            top_k: int | None = None, freeze_embeddings: bool | None = None, pack: bool | None = None,
            max_length: int | None = None,
            seed: int | None = None, device: str | None = None, compile: bool | None = None,
            fsdp: bool | None = None,
            teacher_cache: bool | None = None, cache_dir: PathLike | None = None,
            checkpoint_every: int | None = None, allow_poor_student: bool | None = None,
            resume: bool | None = None, overwrite: bool | None = None, quiet: bool | None = None,
            trust_remote_code: bool | None = None, log: Log | None = print) -> Student | None:
    """Train a compact student to imitate `teacher` on `data` and save it to `out`
    (`edgekd distill --help` says what each option does). Returns the Student (None on the
    processes other than rank 0 under torchrun); raises GateFailed, after saving it, for a
    student no better than guessing unless `allow_poor_student`. `log` receives the lines the
    command line prints (None: silent); `quiet` switches progress bars off.

    Options (on the command line: --name-with-dashes):
        task: text-classification, causal-lm or image-classification (default: read from the teacher's
            config.json).
        teacher: Teacher folder or hub id: a sequence classifier, an image classifier or a causal LM (also a
            .gguf file).
        data: Training data: .csv, .tsv, .jsonl, .parquet or .txt (one text per line), a folder written by
            datasets.save_to_disk, or a hub dataset id (name or name:config).
        split: Split of a --data dataset with several (default: train).
        out: Folder for the student (save_pretrained format).
        recipe: YAML file whose keys are these options (student-layers: 2); flags override it.
        student_layers: Student = teacher layers: a count or indices like 0,3,5 (text-classification default
            2). A count is evenly spaced for encoders (ALBERT: repeats of its shared layer); for causal LMs
            it drops the contiguous block that changes the hidden state least.
        student_config: Student = the teacher shrunk to this shape:
            hidden=192,layers=2,heads=6,intermediate=768. Sliced from the teacher's weights (hidden
            channels, heads and FFN neurons ranked by activation on 512 training texts; BERT, RoBERTa,
            XLM-R, ELECTRA, DistilBERT, MPNet, Llama, Qwen2, Mistral); with --student-layers, those teacher layers
            are the ones sliced.
        student_init: How a --student-config student starts: slice (from the teacher's weights) or random
            (the configuration alone; embeddings of unchanged shape copied).
        student: Student = this model folder or hub id (a plain encoder gets the teacher's labels); with
            --student-layers, those layers of it.
        latency_budget_ms: Student = the most capable shape (layers x width, sliced from the teacher) whose
            --budget-target export runs within this many ms here at batch 1 (causal LMs: per decoded token);
            the candidates' timings are shown and cached per machine.
        budget_target: The target a --latency-budget-ms is measured on.
        trim_vocab: Keep only the tokens the training text uses (and the special ones): the student's
            embedding (a causal LM's output head too) and tokenizer shrink, kept text tokenizes exactly as
            before; the share of held-out words that tokenize differently is reported (causal LMs: by edgekd
            bench).
        fine_tune_teacher: Text classifiers: fine-tune --teacher on --data's labels first (a pretrained encoder
            without a classification head, such as a sentence-transformers checkpoint, or a classifier of other
            labels: a new head for the data's labels; 3 epochs at learning rate 5e-5, the best epoch on the
            validation rows kept), once: the fine-tuned teacher is cached under $EDGEKD_CACHE/teachers/ and
            reused by later runs on the same teacher, data and options.
        trim_vocab_max_drop: With --trim-vocab, the validation accuracy (points) a trim may cost; a trim that
            costs more is not kept: the student is saved with the teacher's vocabulary, with a warning.
        trim_vocab_min_count: With --trim-vocab, keep a token only if the training text uses it at least
            this often
        augment: Also train on this many word-substituted copies of every training row (TinyBERT's
            augmentation: each word replaced with probability 0.4 by one of its 15 nearest words in the
            teacher's input embeddings), taught by the teacher's soft labels alone; 0 = off. Each copy costs
            as much training time as the data itself.
        sequence_length: Tokens per input when timing a --latency-budget-ms (causal LMs: the cache length).
        validation_data: Validation data for choosing the best epoch (default: a slice of --data).
        validation_split: Split of a --validation-data dataset (default: validation).
        validation_fraction: Share of --data held out for validation when --validation-data is absent.
        validation_rows: At most this many held-out rows (the teacher runs over them before the first step).
        text_column: Column with the input text.
        image_column: Column of a --data table with image paths (relative to the table) or bytes (default:
            image, img, path, ...); a folder of class folders (root/<label>/*.png) needs none.
        crop_scale: Random-resized crop keeping at least this share of each picture (0: off); teacher and
            student see the same view, so the teacher runs every step.
        flip: Random horizontal flips (the same for teacher and student).
        mixup: Mixup of picture pairs, Beta(a, a) with this a (0: off).
        label_column: Column with labels (names or indices); empty rows learn from soft labels.
        text_pair_column: Column with the second text of text-pair tasks.
        prompt_column: Column with a prompt, prepended to the text and not learnt.
        epochs: Passes over the training data.
        max_steps: Stop after this many optimiser steps (0: --epochs decides).
        lr: Peak learning rate (AdamW, warm-up then linear decay); a --student-config or --latency-budget-ms
            student: 0.0003 sliced, 0.001 random.
        batch_size: Examples per optimiser step, over all processes.
        gradient_accumulation: Run each step's batch as this many micro-batches (less memory, same result).
        warmup_fraction: Share of steps with a rising learning rate.
        weight_decay: AdamW decoupled weight decay.
        max_grad_norm: Clip gradients to this global norm.
        temperature: Softmax temperature of the KD term (causal LMs: inside the divergence).
        hard_label_weight: Weight of cross-entropy on the hard labels (classes; next tokens for causal LMs);
            the rest goes to matching the teacher.
        hidden_mse_weight: Weight of hidden-state (feature-map) MSE (TinyBERT).
        hidden_cosine_weight: Weight of hidden-state cosine loss (DistilBERT).
        attention_weight: Weight of attention-distribution KL (TinyBERT).
        minilm_weight: Weight of MiniLM-v2 q/k/v relation KL (last layers).
        minilm_relation_heads: Heads the MiniLM relations are split into (0: the teacher's head count).
        layer_map: Student:teacher layer pairs like 0:1,1:5 (default: the layers cut from, else uniform).
        divergence: forward_kl, reverse_kl or jsd.
        beta: JSD weight on the teacher (0 forward KL, 1 reverse KL).
        top_k: Teacher tokens cached per position (0: run the teacher every step).
        freeze_embeddings: Keep the token embeddings and output head fixed
        pack: Join the texts, each ended by the end-of-text token, and train on full --max-length sequences
            cut from them (no token of a long text dropped, no padding).
        max_length: Tokens per example after truncation.
        seed: Random seed.
        device: auto, cpu or cuda (bf16 autocast on cuda).
        compile: torch.compile the student.
        fsdp: Under torchrun, shard the teacher and the student across the processes with PyTorch FSDP2, so a
            teacher no single device holds can teach; the teacher runs inside the loop (with --no-teacher-cache;
            causal LMs: --top-k 0). One process: nothing to shard.
        teacher_cache: Store teacher outputs on disk once (fp16; a shard at a time, as the first epoch reaches
            it) and reuse them across epochs and runs.
        cache_dir: Where teacher caches live (default $EDGEKD_CACHE/teacher-outputs; causal-lm:
            $EDGEKD_CACHE/lm-top-k).
        checkpoint_every: Steps between checkpoints in OUT.checkpoints/, also at epoch ends (0: no
            checkpoints).
        allow_poor_student: Keep a student no better than guessing (while the teacher is) without failing:
            by default that run exits with code 2. Guessing is the most common label (validation accuracy)
            for classifiers, the training text's token frequencies (next-token loss) for causal LMs.
        resume: Continue from the checkpoint of an interrupted run.
        overwrite: Replace --out (and its checkpoints) if they exist.
        quiet: No progress bars.
        trust_remote_code: Allow model folders to run their own Python code (only for sources you trust).
    """
    options = _given(locals())
    if recipe is not None:
        options = {**recipe_values(Path(recipe)), **options}  # the options given win over the recipe
    for name in ("teacher", "data", "out"):
        if options.get(name) is None:
            raise UserError(f"--{name} is required (give it as a flag or in the --recipe file)")
    task_name = _task_of(options.get("task"), options["teacher"], hub=True)
    refuse_options_of_other_tasks("distill", options, task_name)
    resolved = _resolved(distill, task_name, options)
    refuse_overlap(resolved["out"], {"teacher": resolved["teacher"], "student": resolved["student"],
                                     "data": resolved["data"], "validation data": resolved["validation_data"],
                                     "recipe": recipe, "cache folder": resolved["cache_dir"]})
    # one writer per out folder, from the first moment: a second run fails at once, not after training
    with exclusive(Path(resolved["out"])) if first_process() else contextlib.nullcontext():
        return PIPELINES[task_name].distill(resolved, given=set(options), log=log or _silent)


def _silent(line: str) -> None:
    pass


def recipe_values(path: Path) -> dict:
    """A recipe's values, keyed by parameter name and converted as the options' types say.

    Keys must be the option names exactly as typed on the command line without the dashes in
    front (`student-layers`, `hidden-mse-weight`)."""
    import yaml

    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise UserError(f"cannot read recipe {path}: {error.strerror}; pass an existing YAML file") from error
    except yaml.YAMLError as error:
        raise UserError(f"recipe {path} is not valid YAML ({str(error).splitlines()[0]}); fix the file") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"recipe {path} must be a mapping of option: value, got {type(loaded).__name__}")
    types = option_types(distill)
    values = {}
    for key, value in loaded.items():
        name = str(key).replace("-", "_")
        if "_" in str(key) or name not in types or name in ("recipe", "log"):
            hint = str(key).replace("_", "-")
            known = hint.replace("-", "_") in types
            raise UserError(f"recipe {path}: '{key}' is not a distill option"
                            f"{f'; did you mean {hint}?' if known and hint != key else ''} "
                            f"(see edgekd distill --help)")
        if value is not None:  # an empty entry (`epochs:`) leaves the option at its default
            values[name] = _convert(value, types[name], where=f"recipe {path}: {key}")
    return values


def option_types(function) -> dict[str, type]:
    """Each keyword's type, Optional taken off (what a recipe's or a flag's text becomes)."""
    types = {}
    for name, hint in typing.get_type_hints(function).items():
        arguments = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) not in (Union, UnionType):
            types[name] = hint
        elif len(arguments) == 1:
            types[name] = arguments[0]
        else:  # a path wherever a path is taken (data, folders); else text (a hub id stays a string)
            types[name] = Path if Path in arguments else str if str in arguments else hint
    return types


_MESSAGES = {int: "Input should be a valid integer", float: "Input should be a valid number",
             bool: "Input should be a valid boolean"}


def _convert(value, kind, *, where: str):
    """`value` as `kind` (int, float, bool, str, a path), or one line naming it."""
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "yes", "on", "1"):
                return True
            if text in ("false", "no", "off", "0"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            return str(value)
        return Path(str(value)) if isinstance(value, str) else value
    except (TypeError, ValueError):
        raise UserError(f"{where}: {value!r}: {_MESSAGES.get(kind, 'Input is not valid')}") from None


# ---------------------------------------------------------------------------- export

@_libraries_quiet
def export(student: Path | Student, *, out: Path, targets: Sequence[str] | None = None, task: str | None = None,
           data: Path | str | list | None = None, split: str | None = None,
           calibration_data: Path | str | list | None = None, text_column: str | None = None,
           image_column: str | None = None, label_column: str | None = None, text_pair_column: str | None = None,
           max_length: int | None = None, exporter: str | None = None, max_perplexity_ratio: float | None = None,
           verify: Sequence[str] | None = None, with_tokenizer: bool | None = None, overwrite: bool | None = None,
           quiet: bool | None = None, log: Log | None = print) -> list:
    """Convert the student folder for each target (`edgekd targets` lists them) into
    `out/<target>/`, each checked against PyTorch and, with `data`, held to its target's budget
    (`edgekd export --help`). Returns the artifacts written; `log` receives their summary.

    Options (on the command line: --name-with-dashes):
        student: Student folder written by edgekd distill (or any save_pretrained folder).
        task: text-classification, causal-lm or image-classification (default: read from the student's
            config.json).
        targets: Target name from `edgekd targets` or a YAML file; repeatable.
        out: Folder that receives one sub-folder per target.
        data: Validation data (a file, a saved dataset or a hub id, as for distill): every artifact is held
            to its target's budget on it (accuracy; causal LMs: perplexity). Without it classifiers are
            checked on random batches, causal LMs on text sampled from the student.
        split: Split of a --data dataset (default: validation).
        calibration_data: Training samples for static int8 calibration (default: --data).
        text_column: Column with the input text.
        image_column: Image classifiers: the column of a --data table holding image paths or bytes (default:
            image, img, path, ...); a folder of class folders needs none.
        label_column: Column with labels; empty: agreement only.
        text_pair_column: Column with the second text of text-pair tasks.
        max_length: Tokens per example after truncation (causal LMs: longest prompt + generated tokens).
        exporter: Override the targets' exporter: torchscript, dynamo or optimum.
        max_perplexity_ratio: Largest perplexity of a quantised export over the fp32 export's (default: the
            target's budget: onnx-int8 1.1, onnx-int4 2); int8 keeps its worst-quantising MatMuls float
            until it holds.
        verify: Also run each ONNX/.ort artifact on another machine and compare it with this one: arm64 runs
            it with the aarch64 onnxruntime under qemu emulation, on an older and a recent ARM core (sets
            itself up on first use, about 250 MB, cached); repeatable.
        with_tokenizer: Also write, beside each ONNX/.ort model, one that takes raw strings: for a text
            classifier (single texts or pairs) its WordPiece tokenizer as ONNX Runtime Extensions operators
            in front of the model; for a causal LM (byte-level BPE) a prompt encoder, prompt_encoder.onnx.
            Checked token for token against the Python tokenizer; the app registers the extensions library
        overwrite: Replace existing target folders.
        quiet: No progress output (the int8 search's, reading pictures).
    """
    from edgekd.exporting.artifact import check_request
    from edgekd.exporting.verify import check_choices
    from edgekd.targets import load_targets_for

    student, out = _folder(student), Path(out)
    options = {**_given(locals()), "student": student}
    task_name = _task_of(task, student)
    refuse_options_of_other_tasks("export", options, task_name)
    resolved = _resolved(export, task_name, options)
    chosen = load_targets_for(list(resolved["targets"]), task_name)
    if not 2 <= resolved["max_length"] <= 8192:
        raise UserError(f"--max-length {resolved['max_length']} is out of range; choose 2 to 8192")
    check_request(student, chosen, out, overwrite=resolved["overwrite"], task=task_name)
    for target in chosen:  # only OUT/<target> is written: it must not overlap what the export reads
        refuse_overlap(out / target.name, {"student": student, "data": resolved["data"],
                                           "calibration data": resolved["calibration_data"]})
    check_choices(list(resolved["verify"]))
    pipeline = PIPELINES[task_name]
    created = not out.exists()
    try:
        with contextlib.ExitStack() as locks:  # one writer per target folder, from the first moment
            for target in chosen:
                locks.enter_context(exclusive(out / target.name))
            artifacts = pipeline.export(student, targets=chosen, out=out, options=resolved, log=log or _silent)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failed export leaves no empty --out folder of its own making
        raise
    if log is not None:
        pipeline.show_export(artifacts, out=out, checked=resolved["data"] is not None, log=log)
    return artifacts


# ---------------------------------------------------------------------------- bench

@_libraries_quiet
def bench(*, teacher: str | None = None, data: Path | str | list | None = None,
          student: Path | Student | None = None, artifacts: Sequence[Path] | None = None,
          teacher_artifacts: Sequence[Path] | None = None, task: str | None = None, out: PathLike | None = None,
          split: str | None = None, text_column: str | None = None,
          image_column: str | None = None, label_column: str | None = None, text_pair_column: str | None = None,
          max_length: int | None = None, sequence_length: Sequence[int] | None = None, threads: int | None = None,
          repeats: int | None = None, throughput_batch: int | None = None, memory: bool | None = None,
          roofline: bool | None = None, max_accuracy_drop: float | None = None,
          max_perplexity_ratio: float | None = None, max_latency_ms: float | None = None,
          max_size_mb: float | None = None, plot: bool | None = None, new_tokens: int | None = None,
          rounds: int | None = None, quiet: bool | None = None, trust_remote_code: bool | None = None,
          log: Log | None = print) -> Report:
    """Measure the teacher, the student and the exported artifacts on the same data, interleaved
    (`edgekd bench --help`), and write report.json, report.md (and report.png) to `out`
    (default: the first artifacts folder, else runs/bench). Returns the Report; a failed gate
    is `report.passed == False` (the command line then exits with code 2).

    Options (on the command line: --name-with-dashes):
        teacher: Teacher folder or hub id (the reference; a causal LM may be a .gguf file).
        data: Evaluation data (a file, a saved dataset or a hub id, as for distill; images: also a folder of
            class folders): labelled for classifiers; held-out text for causal LMs.
        split: Split of a --data dataset (default: test).
        student: Student folder (PyTorch) to include.
        artifacts: Output folder of edgekd export; repeatable (artifacts exported from the teacher itself
            are reported as teacher/TARGET, the no-distillation baseline). Causal LMs: one folder.
        teacher_artifacts: Output folder of edgekd export run on the teacher itself; repeatable. Each
            student artifact is also compared with the teacher's artifact of the same target, measured in
            the same run (column 'vs teacher/target'): the speedup distillation alone bought.
        task: text-classification, image-classification or causal-lm (default: read from the student's or
            teacher's config.json).
        out: Where report.json, report.md (and for classifiers report.png) go (default: --artifacts, else
            runs/bench).
        text_column: Column with the input text.
        image_column: Column with image paths or bytes (default: image, img, path, ...).
        label_column: Column with labels.
        text_pair_column: Second text column.
        max_length: Tokens per example for the accuracy (causal LMs: perplexity) pass.
        sequence_length: Tokens per input for the latency pass; repeatable (the first is the headline).
        threads: Threads for latency; default: each artifact's target profile (1 = a phone core).
        repeats: Interleaved timed repeats per model at batch 1.
        throughput_batch: Batch size of the throughput pass (0 = skip).
        memory: Measure peak resident memory (one process per model).
        roofline: Count operations and compare with the machine's peak.
        max_accuracy_drop: Gate: accuracy points an artifact may lose against the student it was exported
            from (default: its target's budget).
        max_perplexity_ratio: Gate: perplexity over that of the model an artifact was made from (the
            student; the teacher for the student) (default: its target's budget).
        max_latency_ms: Gate: p50 latency at batch 1 in ms; causal LMs: per decoded token (default: its
            target's budget).
        max_size_mb: Gate: model file size in MB (default: its target's budget).
        plot: Write report.png (accuracy vs latency, size).
        new_tokens: Tokens generated per speed measurement.
        rounds: Interleaved speed rounds (medians are reported).
        quiet: No progress bars.
        trust_remote_code: Allow model folders to run their own Python code (only for sources you trust).
    """
    from edgekd.benchmarking.gates import GateLimits
    from edgekd.benchmarking.report import print_table, write_report

    student, artifacts = _folder(student), [_folder(a) for a in artifacts or []] or None
    options = _given(locals())
    for name in ("teacher", "data"):
        if options.get(name) is None:
            raise UserError(f"--{name} is required: the bench measures the teacher and the others on that data")
    if isinstance(teacher, tuple):
        raise UserError("bench measures the teacher's own files (its memory in a child process): pass the "
                        "teacher's folder, hub id or .gguf file, not a loaded model")
    task_name = _task_of(task, student, teacher, hub=True)
    refuse_options_of_other_tasks("bench", options, task_name)
    resolved = _resolved(bench, task_name, options)
    gates = GateLimits(max_accuracy_drop=max_accuracy_drop, max_perplexity_ratio=max_perplexity_ratio,
                       max_latency_ms=max_latency_ms, max_size_mb=max_size_mb)
    folder = Path(out or (artifacts[0] if artifacts else "runs/bench"))
    folders = list(artifacts or []) + _teacher_exports(teacher_artifacts or [], teacher=teacher)
    plot = resolved["plot"] and TASKS[task_name].contract == "classifier"
    with exclusive(folder, what="bench report folder"):  # one bench writes a report folder at a time
        report = PIPELINES[task_name].bench(resolved, artifacts=folders or None, gates=gates)
        write_report(report, folder, plot=plot)
    if log is not None:
        print_table(report)
        log(f"report written to {folder}/report.json, report.md{' and report.png' if plot else ''}")
    return Report(data=report, folder=folder)


def _folder(made) -> Path | None:
    """The folder of what an earlier call returned (a Student, an Artifact), or the path given."""
    if made is None:
        return None
    return Path(getattr(made, "path", None) or getattr(made, "folder", None) or made)


def _teacher_exports(roots: list, *, teacher) -> list[Path]:
    """The artifact folders under `roots`, each checked to be exported from `teacher`."""
    from edgekd.lm.models import dequantised_gguf
    from edgekd.manifest import artifact_folders, origin_of, read_manifest

    reference = dequantised_gguf(Path(teacher)) if str(teacher).lower().endswith(".gguf") else Path(teacher)
    folders = [folder for root in roots for folder in artifact_folders(Path(root))]
    for folder in folders:
        manifest = read_manifest(folder)
        if origin_of(manifest, reference) != "teacher":
            raise UserError(f"--teacher-artifacts {folder} was exported from {manifest.get('source_student')}, "
                            f"not from the teacher {teacher}; export the teacher itself: "
                            f"edgekd export {teacher} --target {manifest.get('target')} --out DIR")
    return folders


# ---------------------------------------------------------------------------- demo

@_libraries_quiet
def demo(*, task: str | None = None, out: Path | None = None, epochs: int | None = None,
         max_steps: int | None = None, cache_dir: Path | None = None, limit: int | None = None,
         max_length: int | None = None, repeats: int | None = None, student_layers: str | None = None,
         overwrite: bool | None = None, quiet: bool | None = None, log: Log | None = print) -> None:
    """The whole pipeline offline on a task's embedded default (`edgekd demo --help`).

    Options (on the command line: --name-with-dashes):
        task: text-classification (MiniLM + BBC News), image-classification (ResNet + Fashion-MNIST) or
            causal-lm (SmolLM2-135M + BBC News text) (default: text-classification).
        out: Folder for student, artifacts and report.
        epochs: Student epochs (text-classification default 2, image-classification 4; causal-lm: instead of
            --max-steps).
        max_steps: Stop after this many optimiser steps (causal-lm default 150, which fits a 2-core CPU).
        cache_dir: Where the built teacher is cached (default $EDGEKD_CACHE or ~/.cache/edgekd).
        limit: Use at most this many articles (pictures) per split (a quick run).
        max_length: Tokens per article.
        repeats: Interleaved latency repeats per model.
        student_layers: SmolLM2 layers the student keeps (of 30).
        overwrite: Replace --out if it exists.
        quiet: No progress bars.
    """
    options = _given(locals())
    task_name = check_task(task or text_classification.NAME).name
    refuse_options_of_other_tasks("demo", options, task_name)
    resolved = _resolved(demo, task_name, options)
    resolved["out"] = Path(resolved["out"])
    with exclusive(resolved["out"], what="demo folder"):  # one demo writes a folder at a time, from the first moment
        PIPELINES[task_name].demo(resolved, log=log or _silent)
