"""The Python API: `edgekd.training`, `edgekd.exporting` and `edgekd.benchmarking`.

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

from edgekd.errors import UserError, exclusive, first_process
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
                    label_column="label", trim_vocab=False, allow_poor_student=False, resume=False,
                    overwrite=False, quiet=False, trust_remote_code=False),
    "export": dict(targets=("onnx-int8",), text_column="text", label_column="label", max_length=128, verify=(),
                   with_tokenizer=False, overwrite=False),
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


def _resolved(command: str, task: str, given: dict, names: Sequence[str]) -> dict:
    """Every option by name: given, else the task's default, else the command's, else None."""
    defaults = {**DEFAULTS[command], **TASKS[task].defaults.get(command, {})}
    return {name: given[name] if name in given else defaults.get(name) for name in names}


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
            out: PathLike | None = None, task: str | None = None, split: str | None = None, recipe: PathLike | None = None, student_layers: str | None = None,
            student_config: str | None = None, student_init: str | None = None, student: str | None = None,
            latency_budget_ms: float | None = None, budget_target: str | None = None,
            trim_vocab: bool | None = None, trim_vocab_min_count: int | None = None,
            sequence_length: int | None = None, validation_data: Path | str | list | None = None,
            validation_split: str | None = None,
            validation_fraction: float | None = None, text_column: str | None = None,
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
            top_k: int | None = None, freeze_embeddings: bool | None = None, max_length: int | None = None,
            seed: int | None = None, device: str | None = None, compile: bool | None = None,
            teacher_cache: bool | None = None, cache_dir: PathLike | None = None,
            checkpoint_every: int | None = None, allow_poor_student: bool | None = None,
            resume: bool | None = None, overwrite: bool | None = None, quiet: bool | None = None,
            trust_remote_code: bool | None = None, log: Log | None = print) -> Student | None:
    """Train a compact student to imitate `teacher` on `data` and save it to `out`
    (`edgekd distill --help` says what each option does). Returns the Student (None on the
    processes other than rank 0 under torchrun); raises GateFailed, after saving it, for a
    student no better than guessing unless `allow_poor_student`. `log` receives the lines the
    command line prints (None: silent); `quiet` switches progress bars off."""
    options = _given(locals())
    if recipe is not None:
        options = {**recipe_values(Path(recipe)), **options}  # the options given win over the recipe
    for name in ("teacher", "data", "out"):
        if options.get(name) is None:
            raise UserError(f"--{name} is required (give it as a flag or in the --recipe file)")
    task_name = _task_of(options.get("task"), options["teacher"], hub=True)
    refuse_options_of_other_tasks("distill", options, task_name)
    names = [name for name in inspect.signature(distill).parameters if name not in ("recipe", "log", "task")]
    resolved = _resolved("distill", task_name, options, names)
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
        values[name] = None if value is None else _convert(value, types[name], where=f"recipe {path}: {key}")
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
def export(student: PathLike | Student, *, out: PathLike, targets: Sequence[str] | None = None, task: str | None = None,
           data=None, split: str | None = None, calibration_data=None, text_column: str | None = None,
           image_column: str | None = None, label_column: str | None = None, text_pair_column: str | None = None,
           max_length: int | None = None, exporter: str | None = None, max_perplexity_ratio: float | None = None,
           verify: Sequence[str] | None = None, with_tokenizer: bool | None = None, overwrite: bool | None = None,
           log: Log | None = print) -> list:
    """Convert the student folder for each target (`edgekd targets` lists them) into
    `out/<target>/`, each checked against PyTorch and, with `data`, held to its target's budget
    (`edgekd export --help`). Returns the artifacts written; `log` receives their summary."""
    from edgekd.exporting.artifact import check_request
    from edgekd.exporting.verify import check_choices
    from edgekd.targets import load_targets_for

    student, out = _folder(student), Path(out)
    options = {**_given(locals()), "student": student}
    task_name = _task_of(task, student)
    given = set(options) - {"student", "out", "task"}
    refuse_options_of_other_tasks("export", given, task_name)
    resolved = _resolved("export", task_name, options, [n for n in inspect.signature(export).parameters
                                                      if n not in ("student", "out", "task", "log")])
    chosen = load_targets_for(list(resolved["targets"]), task_name)
    if not 2 <= resolved["max_length"] <= 8192:
        raise UserError(f"--max-length {resolved['max_length']} is out of range; choose 2 to 8192")
    check_request(student, chosen, out, overwrite=resolved["overwrite"], task=task_name)
    check_choices(list(resolved["verify"]))
    pipeline = PIPELINES[task_name]
    with contextlib.ExitStack() as locks:  # one writer per target folder, from the first moment
        for target in chosen:
            locks.enter_context(exclusive(out / target.name))
        artifacts = pipeline.export(student, targets=chosen, out=out, options=resolved, log=log or _silent)
    if log is not None:
        pipeline.show_export(artifacts, out=out, checked=resolved["data"] is not None, log=log)
    return artifacts


# ---------------------------------------------------------------------------- bench

@_libraries_quiet
def bench(*, teacher, data, student: PathLike | Student | None = None, artifacts: Sequence | None = None,
          teacher_artifacts: Sequence[PathLike] | None = None, task: str | None = None,
          out: PathLike | None = None, split: str | None = None, text_column: str | None = None,
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
    is `report.passed == False` (the command line then exits with code 2)."""
    from edgekd.benchmarking.gates import GateLimits
    from edgekd.benchmarking.report import print_table, write_report

    student, artifacts = _folder(student), [_folder(a) for a in artifacts or []] or None
    options = _given(locals())
    if isinstance(teacher, tuple):
        raise UserError("bench measures the teacher's own files (its memory in a child process): pass the "
                        "teacher's folder, hub id or .gguf file, not a loaded model")
    task_name = _task_of(task, student, teacher, hub=True)
    refuse_options_of_other_tasks("bench", set(options) - {"teacher", "data", "task"}, task_name)
    resolved = _resolved("bench", task_name, options, [n for n in inspect.signature(bench).parameters
                                                     if n not in ("task", "log")])
    resolved["student"] = student
    gates = GateLimits(max_accuracy_drop=max_accuracy_drop, max_perplexity_ratio=max_perplexity_ratio,
                       max_latency_ms=max_latency_ms, max_size_mb=max_size_mb)
    folder = Path(out or (artifacts[0] if artifacts else "runs/bench"))
    folders = [Path(a) for a in artifacts or []] + _teacher_exports(teacher_artifacts or [], teacher=teacher)
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

    if roots and isinstance(teacher, tuple):
        raise UserError("teacher_artifacts are checked against the teacher's folder; pass the teacher as a path")
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
def demo(*, task: str | None = None, out: PathLike | None = None, epochs: int | None = None,
         max_steps: int | None = None, cache_dir: PathLike | None = None, limit: int | None = None,
         max_length: int | None = None, repeats: int | None = None, student_layers: str | None = None,
         overwrite: bool | None = None, quiet: bool | None = None, log: Log | None = print) -> None:
    """The whole pipeline offline on a task's embedded default (`edgekd demo --help`)."""
    options = _given(locals())
    task_name = check_task(task or text_classification.NAME).name
    refuse_options_of_other_tasks("demo", set(options) - {"task", "out", "epochs", "max_steps", "quiet"}, task_name)
    resolved = _resolved("demo", task_name, options, [n for n in inspect.signature(demo).parameters
                                                    if n not in ("task", "log")])
    resolved["out"] = Path(resolved["out"])
    with exclusive(resolved["out"], what="demo folder"):  # one demo writes a folder at a time, from the first moment
        PIPELINES[task_name].demo(resolved, log=log or _silent)
