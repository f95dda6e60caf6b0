"""Text classification's pipeline: its data read with the teacher's labels, its student
(layers, a sliced or random shape, a latency budget, a trimmed vocabulary), then the stages
every classifier shares (edgekd/training/train.py, edgekd/exporting/stage.py, edgekd/benchmarking/stage.py).

Each function takes the options as `edgekd.distill/export/bench` hold them (`options`: every
option by name, defaults filled in, None where the task's config holds the default; `given`:
the names given) and returns their result."""

from __future__ import annotations

from pathlib import Path

from edgekd.errors import UserError
from edgekd.tasks import TEXT_CLASSIFICATION
from edgekd.tasks.shared import (Log, check_writable, classifier_student, held_out, judge_student, label2id_of,
                                 saved_label2id, sized_student_config, student_lr, vocabulary_trim)

NAME = TEXT_CLASSIFICATION.name


def _columns(options: dict, *, label: bool = True):
    from edgekd.data import Columns

    return Columns(text=options["text_column"], label=(options["label_column"] or None) if label else None,
                   text_pair=options["text_pair_column"])


def distill(options: dict, *, given: set[str], log: Log):
    """Load, make the student, call the text-classification stage."""
    from edgekd.config import DistillConfig, config_from
    from edgekd.data import load_file, sample_batches
    from edgekd.training.train import distill as run_distill
    from edgekd.vocab import describe

    config = config_from(DistillConfig, options, given)
    out, init = Path(options["out"]), options["student_init"]
    check_writable(out, overwrite=options["overwrite"] or options["resume"])
    if options["fine_tune_teacher"]:
        teacher_model, tokenizer = fine_tuned_teacher(options, config=config, log=log)
    else:
        teacher_model, tokenizer = _teacher(options["teacher"], trust_remote_code=options["trust_remote_code"])
    layers, shape, given_student = options["student_layers"], options["student_config"], options["student"]
    if options["latency_budget_ms"] is not None:
        shape = sized_student_config(teacher_model, tokenizer, task=NAME, budget_ms=options["latency_budget_ms"],
                                     target=options["budget_target"],
                                     sequence_length=options["sequence_length"],
                                     given=(layers, shape, given_student), log=log)
    if not (layers or shape or given_student):
        layers = "2"
    if shape:
        config = _reshaped_student_lr(config, teacher_model, shape, init, given=given, log=log)
    columns, label2id = _columns(options), label2id_of(teacher_model)
    train = load_file(options["data"], columns=columns, label2id=label2id, split=options["split"],
                      default_split="train")
    probe = (sample_batches(train, tokenizer, max_length=config.max_length, seed=config.seed)
             if shape and init == "slice" else None)  # what a sliced width is ranked on
    student_model, student_tokenizer = make_student(
        teacher_model, tokenizer, layers=layers, config_spec=shape, model=given_student, seed=config.seed,
        init=init, probe=probe)
    validation, train = held_out(train, options=options, config=config, read=lambda source, split: load_file(
        source, columns=columns, label2id=label2id, split=split, default_split="validation"))
    if options["augment"]:
        train = _augmented(train, copies=options["augment"], teacher=teacher_model, tokenizer=tokenizer,
                           seed=config.seed, log=log)
    trimming = options["trim_vocab"]  # only then is every text read here
    trim = vocabulary_trim(trimming, options["trim_vocab_min_count"], texts=_all_texts(train) if trimming else [],
                           held_out=_all_texts(validation) if validation is not None and trimming else None,
                           tokenizer=student_tokenizer, model_config=student_model.config,
                           max_drop=options["trim_vocab_max_drop"])
    result = run_distill(teacher=teacher_model, student=student_model, tokenizer=student_tokenizer,
                         train=train, validation=validation, config=config, out=out,
                         overwrite=options["overwrite"], show_progress=not options["quiet"], resume=options["resume"],
                         cache_dir=options["cache_dir"], trim=trim)
    if result.student_dir is None:  # not rank 0 under torchrun: rank 0 reports
        return None
    if result.vocabulary:
        log(f"{'warning: ' if result.vocabulary.get('not_kept') else ''}student: {describe(result.vocabulary)}")
    student = classifier_student(result, validation, task=NAME, unit="samples")
    return judge_student(student, allow_poor_student=options["allow_poor_student"], log=log)


def make_student(teacher, teacher_tokenizer, *, layers: str | None = None,
                 config_spec: str | None = None, model: str | Path | None = None,
                 seed: int = 0, init: str = "slice", probe: list[dict] | None = None
                 ) -> tuple:
    """The student, made one of three ways, checked against the teacher.

    `layers` with `model` cuts those layers out of the given model instead of the teacher
    (e.g. a few layers of the pretrained encoder the teacher was fine-tuned from); with
    `config_spec` it picks the teacher layers whose width is then sliced (edgekd.slicing,
    ranked on the `probe` batches; `init` "random" starts from random weights instead).
    """
    from edgekd.models import (check_compatible, layer_count, load_student, parse_layers, select_layers,
                               use_eager_attention)
    from edgekd.slicing import configured_student

    given = [name for name, value in (("--student-layers", layers), ("--student-config", config_spec),
                                      ("--student", model)) if value]
    if len(given) != 1 and given not in (["--student-layers", "--student"], ["--student-layers", "--student-config"]):
        raise UserError(f"choose exactly one way to make the student, got {' and '.join(given) or 'none'}: "
                        "--student-layers, --student-config or --student (or --student-layers with either)")
    if model:
        student, tokenizer = load_student(model, teacher=teacher)
        if layers:
            student = select_layers(student, parse_layers(layers, layer_count(student)))
    elif config_spec:
        kept = parse_layers(layers, layer_count(teacher)) if layers else None
        student = configured_student(teacher, config_spec, init=init, layers=kept, probe=probe, seed=seed)
        tokenizer = teacher_tokenizer
    elif layers:
        student = select_layers(teacher, parse_layers(layers, layer_count(teacher)))
        tokenizer = teacher_tokenizer
    check_compatible(teacher, teacher_tokenizer, student, tokenizer)
    use_eager_attention(student)
    return student, tokenizer


# How --fine-tune-teacher trains the teacher (the run's --batch-size, --max-length, --seed and --device)
TEACHER_EPOCHS, TEACHER_LR = 3, 5e-5


def fine_tuned_teacher(options: dict, *, config, log: Log):
    """--teacher fine-tuned on --data's labels (a new head; trained on the rows the student will
    train on, the best epoch chosen on the validation rows it will be validated on), once:
    cached under $EDGEKD_CACHE/teachers/, keyed by the teacher's weights, the data and the
    recipe, sealed, and loaded from there by later runs."""
    import hashlib
    import json
    from dataclasses import replace

    from edgekd.config import cache_dir
    from edgekd.data import Tokenised, load_file
    from edgekd.errors import exclusive
    from edgekd.integrity import seal, trusted
    from edgekd.models import load_classifier, load_for_fine_tuning
    from edgekd.training.cache import teacher_key
    from edgekd.training.train import distill as run_distill

    source = options["teacher"]
    if isinstance(source, tuple):
        raise UserError("--fine-tune-teacher takes the teacher as a folder or hub id; fine-tune a model you hold "
                        "in memory with edgekd.distill(teacher=None, student=...) first")
    columns = _columns(options)
    data = load_file(options["data"], columns=columns, label2id=None, split=options["split"], default_split="train")
    if not data.has_labels:
        raise UserError(f"--fine-tune-teacher learns from the labels of --data, and {options['data']} has none; "
                        "give labelled rows (--label-column)")
    labels = data.label_names
    validation, train = held_out(data, options=options, config=config, read=lambda source, split: load_file(
        source, columns=columns, label2id={name: i for i, name in enumerate(labels)}, split=split,
        default_split="validation"))
    recipe = replace(config, epochs=TEACHER_EPOCHS, max_steps=0, lr=TEACHER_LR, hard_label_weight=1.0,
                     hidden_mse_weight=0.0, attention_weight=0.0, hidden_cosine_weight=0.0, minilm_weight=0.0,
                     checkpoint_every=0)
    model, tokenizer = load_for_fine_tuning(source, labels=labels, seed=config.seed,
                                            trust_remote_code=options["trust_remote_code"])
    rows = lambda dataset: None if dataset is None else {  # noqa: E731
        "texts": Tokenised(dataset, tokenizer, max_length=recipe.max_length).digest(),
        "labels": hashlib.sha256(json.dumps(dataset.labels).encode()).hexdigest()}
    key = teacher_key(model, {"train": rows(train), "validation": rows(validation), "labels": labels,
                              "recipe": {name: getattr(recipe, name) for name in (
                                  "epochs", "lr", "batch_size", "max_length", "seed", "warmup_fraction",
                                  "weight_decay", "max_grad_norm", "gradient_accumulation")}})
    folder = Path(options["cache_dir"] or cache_dir()) / "teachers" / f"fine-tuned-{key}"
    with exclusive(folder, wait=True, what="fine-tuned teacher cache"):
        if trusted(folder, what="fine-tuned teacher cache"):
            log(f"teacher: {source} fine-tuned on {len(train)} rows, cached at {folder}")
        else:
            log(f"teacher: fine-tuning {source} on {len(train)} rows of {len(labels)} labels "
                f"({TEACHER_EPOCHS} epochs, once; cached at {folder})")
            result = run_distill(teacher=None, student=model, tokenizer=tokenizer, train=train, validation=validation,
                                 config=recipe, out=folder, overwrite=True, show_progress=not options["quiet"],
                                 cache_dir=options["cache_dir"])
            if result.validation:
                log(f"teacher: validation accuracy {result.validation['accuracy']:.4f} "
                    f"(epoch {result.best_epoch} of {TEACHER_EPOCHS})")
            seal(folder)  # last: a teacher killed before its checksums are written is fine-tuned again
    return load_classifier(folder, role="teacher")


def _teacher(source, *, trust_remote_code: bool):
    """The teacher and its tokenizer: a folder or hub id, or a (model, tokenizer) pair already loaded."""
    from edgekd.models import load_classifier

    if isinstance(source, tuple):
        return source
    return load_classifier(source, role="teacher", trust_remote_code=trust_remote_code)


def _reshaped_student_lr(config, teacher_model, spec: str, init: str, *, given: set[str], log: Log):
    """A --student-config student's default learning rate: random weights need a larger step than
    weights that already compute something, and a student sliced to a new width a larger one
    than a layer cut at the teacher's width (which keeps --lr's default)."""
    from edgekd.models import parse_student_config
    from edgekd.slicing import WIDTH_KEYS, family_of

    reshaped = any(key in parse_student_config(spec) for key in WIDTH_KEYS)
    random_init = init == "random" or (reshaped and family_of(teacher_model) is None)
    return student_lr(config, random_init=random_init, reshaped=reshaped, given=given, log=log)


def _augmented(train, *, copies: int, teacher, tokenizer, seed: int, log: Log):
    """The training rows and `copies` unlabelled word-substituted copies of each (--augment)."""
    from edgekd.augment import augmented

    if not (isinstance(copies, int) and 0 <= copies <= 100):
        raise UserError(f"--augment must be a whole number of copies from 0 to 100, got {copies}")
    rows = len(train)
    train = augmented(train, copies=copies, embeddings=teacher.get_input_embeddings().weight, tokenizer=tokenizer,
                      seed=seed)
    log(f"augment: {rows:,} training rows and {rows * copies:,} word-substituted copies (taught by the "
        "teacher's soft labels alone)")
    return train


def _all_texts(dataset) -> list[str]:
    """Every text of a classification dataset, the second text of pairs included."""
    return list(dataset.texts) + list(dataset.text_pairs or [])


def read_data(source, *, student: Path, options: dict, split: str | None, label: bool = True):
    """Export's data read with the student's label names, or None when none was given."""
    if source is None:
        return None
    from edgekd.data import load_file

    label2id = saved_label2id(student)
    columns = _columns(options, label=label)
    default = "validation" if columns.label else "train"
    return load_file(source, columns=columns, label2id=label2id, split=split if columns.label else None,
                     default_split=default)


def export(student: Path, *, targets, out: Path, options: dict, log: Log):
    """The classifiers' export stage over text data."""
    validation = read_data(options["data"], student=student, options=options, split=options["split"])
    calibration = read_data(options["calibration_data"], student=student, options=options, split="train",
                            label=False)
    return classifier_export(student, targets=targets, out=out, options=options, validation=validation,
                             calibration=calibration, task=NAME)


def classifier_export(student: Path, *, targets, out: Path, options: dict, validation, calibration, task: str):
    """edgekd/exporting/stage.py for a classifier of text or images."""
    from edgekd.exporting.stage import export as run_export
    from edgekd.targets import EXPORTERS

    exporter = options["exporter"]
    if exporter is not None and exporter not in EXPORTERS:
        raise UserError(f"--exporter '{exporter}' is not one of {', '.join(EXPORTERS)}")
    data, calibration_data = options["data"], options["calibration_data"]
    return run_export(
        student, targets=targets, out=out, overwrite=options["overwrite"], exporter=exporter,
        validation=validation, validation_source=_source(data, "validation data"), calibration=calibration,
        calibration_source=_source(calibration_data, "calibration data"), max_length=options["max_length"],
        verify=tuple(options["verify"]), with_tokenizer=options["with_tokenizer"], task=task)


def _source(data, fallback: str) -> str:
    """How a manifest names where its data came from: the path, or what was handed over in memory."""
    if data is None:
        return fallback
    return str(data) if isinstance(data, (str, Path)) else f"{fallback} given in memory"


def bench(options: dict, *, artifacts, gates) -> dict:
    """The classifiers' bench stage over labelled text."""
    from edgekd.benchmarking.classifier import bench as run_bench
    from edgekd.data import load_file

    teacher_model, tokenizer = _teacher(options["teacher"], trust_remote_code=options["trust_remote_code"])
    dataset = load_file(options["data"], columns=_columns(options), label2id=label2id_of(teacher_model),
                        split=options["split"], default_split="test")
    return run_bench(teacher=_reference(options["teacher"]), student=options["student"], artifacts=artifacts,
                     data=dataset, max_length=options["max_length"],
                     sequence_lengths=list(options["sequence_length"]), **classifier_bench_options(options),
                     gates=gates, teacher_model=(teacher_model, tokenizer))


def classifier_bench_options(options: dict) -> dict:
    """What the bench stage of every classifier reads."""
    return dict(threads=options["threads"], repeats=options["repeats"],
                throughput_batch_size=options["throughput_batch"], measure_memory=options["memory"],
                measure_roofline=options["roofline"], show_progress=not options["quiet"])


def _reference(teacher) -> str:
    """The teacher as the report names it."""
    if isinstance(teacher, tuple):
        return getattr(teacher[0], "name_or_path", "") or "teacher given in memory"
    return str(teacher)


def show_export(artifacts, *, out: Path, checked: bool, log: Log) -> None:
    """A classifier's artifacts as a table: format, size, parity, accuracy, nodes kept float."""
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
            log(f"{artifact.target}: {artifact.accuracy.describe()}; pass more --data rows to measure the drop "
                "more finely")
    if not checked:
        log("accuracy not checked: no --data given, artifacts were checked on random batches only (the manifests "
            "say so)")


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


def demo(options: dict, *, log: Log) -> None:
    """MiniLM-L6 fine-tuned on BBC News -> a sliced, trimmed 2-layer student -> fp32 and int8 -> report."""
    from edgekd.demo import run
    from edgekd.tasks.text_demo import STUDENT_RECIPE, TextDemo

    run(TextDemo(cache=options["cache_dir"], limit=options["limit"], max_length=options["max_length"],
                 epochs=STUDENT_RECIPE.epochs if options["epochs"] is None else options["epochs"],
                 max_steps=options["max_steps"] or 0, repeats=options["repeats"], show_progress=not options["quiet"]),
        out=options["out"])