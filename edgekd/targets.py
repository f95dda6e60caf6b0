"""Device targets are data: `targets/<name>.yaml` says what to build and how to judge it.

A target file names a format, a precision, quantisation options, the opset, the graph
optimisation level, runtime settings and budgets. A device profile (`laptop-x86`,
`phone-arm64`, ...) is a target file that starts from another with `base:` and
overrides what differs, section by section, so a new device needs a YAML file, no code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from edgekd.errors import UserError, first_line

TARGETS_DIR = Path(__file__).resolve().parent.parent / "targets"
FORMATS = ("onnx", "ort", "pte", "gguf", "tflite")
GGUF_TYPES = ("q8_0", "q4_k_m")  # llama.cpp's own quantised types: .gguf only
PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static", "int4", "8da4w", *GGUF_TYPES)  # 8da4w: .pte
GGUF_PRECISIONS = ("fp16", *GGUF_TYPES)  # llama.cpp's f16, Q8_0 and Q4_K_M, for causal LMs
TASK_NAMES = ("text-classification", "causal-lm", "image-classification")  # edgekd.tasks.TASKS, without importing it
INTEGER_TYPES = ("int8", "uint8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")
EXPORTERS = ("torchscript", "dynamo", "optimum")
EXECUTION_PROVIDERS = ("cpu", "xnnpack", "nnapi", "coreml")
EXECUTORCH_BACKENDS = ("xnnpack", "portable")
PTE_PRECISIONS = ("fp32", "int8-dynamic", "int8-static", "8da4w")
TFLITE_PRECISIONS = ("fp32", "int8-dynamic")  # LiteRT: the converter's dynamic-range int8


def _require(condition: bool, message: str) -> None:
    """Range checks of the dataclasses below; the loader adds the file name."""
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class Quantization:
    """How int8 models are made (onnxruntime.quantization)."""

    weight_type: str = "int8"  # int8 or uint8
    activation_type: str = "uint8"  # static int8 only; dynamic int8 always scales to uint8
    per_channel: bool = False  # one scale per output channel instead of per tensor
    reduce_range: bool = False  # 7-bit weights, for CPUs without VNNI that saturate
    op_types: tuple[str, ...] = ("MatMul", "Gemm")  # operator types to quantise
    calibration_method: str = "minmax"  # static int8: minmax, entropy or percentile
    calibration_samples: int = 128  # static int8: training rows run to collect ranges
    percentile: float = 99.999  # percentile calibration: share of values kept in range
    nodes_kept_float: tuple[str, ...] = ()  # node names never quantised
    accuracy_aware: bool = True  # keep the most sensitive nodes float until the budget holds
    max_nodes_kept_float: int = 12  # give up (and fail) after keeping this many in float

    def __post_init__(self) -> None:
        _require(self.weight_type in INTEGER_TYPES, f"weight_type must be one of {INTEGER_TYPES}")
        _require(self.activation_type in INTEGER_TYPES,
                 f"activation_type must be one of {INTEGER_TYPES}")
        _require(self.calibration_method in CALIBRATION_METHODS,
                 f"calibration_method must be one of {CALIBRATION_METHODS}")
        _require(1 <= self.calibration_samples <= 100_000, "calibration_samples must be 1 to 100000")
        _require(90.0 <= self.percentile < 100.0, "percentile must be in [90, 100)")
        _require(len(self.op_types) > 0, "op_types must name at least one operator type")
        _require(0 <= self.max_nodes_kept_float <= 1000, "max_nodes_kept_float must be 0 to 1000")


@dataclass(frozen=True)
class Runtime:
    """How the artifact is meant to run on the device."""

    threads: int = 1  # intra-op threads when benchmarking (1 = one phone core)
    execution_provider: str = "cpu"  # onnxruntime provider the device uses (ort format)
    executorch_backend: str = "xnnpack"  # ExecuTorch backend the .pte is delegated to

    def __post_init__(self) -> None:
        _require(1 <= self.threads <= 256, "threads must be 1 to 256")
        _require(self.execution_provider in EXECUTION_PROVIDERS,
                 f"execution_provider must be one of {EXECUTION_PROVIDERS}")
        _require(self.executorch_backend in EXECUTORCH_BACKENDS,
                 f"executorch_backend must be one of {EXECUTORCH_BACKENDS}")


@dataclass(frozen=True)
class Budgets:
    """Limits an artifact must keep; a broken budget is an error, not a warning."""

    max_accuracy_drop: float = 1.0  # points of accuracy lost vs the fp32 student
    max_latency_ms: float | None = None  # p50 at batch 1 (checked by edgekd bench)
    max_size_mb: float | None = None  # model file size, checked at export
    # Causal LMs: largest perplexity of a quantised export over the fp32 export's (at export),
    # and over the teacher's (checked by edgekd bench); None: no perplexity gate.
    max_perplexity_ratio: float | None = None
    # A drop over max_accuracy_drop counts when the validation rows show it is real: its
    # one-sided p-value is below this (edgekd/exporting/validation.py). 1: every excess counts.
    drop_significance: float = 0.05

    def __post_init__(self) -> None:
        _require(0.0 <= self.max_accuracy_drop <= 100.0, "max_accuracy_drop must be 0 to 100")
        _require(0.0 < self.drop_significance <= 1.0, "drop_significance must be in (0, 1]")
        _require(self.max_latency_ms is None or self.max_latency_ms > 0,
                 "max_latency_ms must be positive")
        _require(self.max_size_mb is None or self.max_size_mb > 0, "max_size_mb must be positive")
        _require(self.max_perplexity_ratio is None or self.max_perplexity_ratio >= 1,
                 "max_perplexity_ratio must be at least 1 (even fp32 is at 1)")


@dataclass(frozen=True)
class Target:
    name: str
    description: str  # one line, shown by `edgekd targets`
    format: str  # onnx, ort, pte, gguf or tflite
    precision: str  # fp32, fp16, int8-dynamic, int8-static or int4 (weight-only)
    tasks: tuple[str, ...] = ("text-classification",)  # the tasks this target applies to
    opset: int = 17  # ONNX opset of the exported graph
    exporter: str = "torchscript"  # torchscript keeps ONNX Runtime's fusions; dynamo; optimum
    graph_optimization_level: str = "all"  # onnxruntime level for sessions and .ort conversion
    quantization: Quantization = field(default_factory=Quantization)
    runtime: Runtime = field(default_factory=Runtime)
    budgets: Budgets = field(default_factory=Budgets)
    # what differs for one task, as target keys (sections merged key by key): `for_tasks:
    # {image-classification: {precision: int8-static, ...}}` in the YAML file
    for_tasks: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        _require(self.format in FORMATS, f"format '{self.format}' is not one of {FORMATS}")
        _require(self.precision in PRECISIONS,
                 f"precision '{self.precision}' is not one of {PRECISIONS}")
        _require(14 <= self.opset <= 21, "opset must be 14 to 21")
        _require(self.exporter in EXPORTERS, f"exporter must be one of {EXPORTERS}")
        _require(self.graph_optimization_level in OPTIMIZATION_LEVELS,
                 f"graph_optimization_level must be one of {OPTIMIZATION_LEVELS}")
        _require(self.format != "pte" or self.precision in PTE_PRECISIONS,
                 f"format pte supports precisions {PTE_PRECISIONS}")
        _require(self.format != "tflite" or (self.precision in TFLITE_PRECISIONS and "causal-lm" not in self.tasks),
                 f"format tflite serves classifiers at precisions {TFLITE_PRECISIONS}")
        _require(self.format != "gguf" or (self.precision in GGUF_PRECISIONS and list(self.tasks) == ["causal-lm"]),
                 f"format gguf serves causal-lm at precisions {GGUF_PRECISIONS}")
        _require(self.precision not in GGUF_TYPES or self.format == "gguf",
                 f"precision {self.precision} is a gguf precision")
        _require(bool(self.tasks) and all(task in TASK_NAMES for task in self.tasks),
                 f"tasks must list one or more of {TASK_NAMES}")

    def applies_to(self, task: str) -> bool:
        return task in self.tasks

    def for_task(self, task: str) -> Target:
        """This target as `task` builds it: its `for_tasks` entry applied."""
        import dataclasses

        changes = {}
        for key, value in self.for_tasks.get(task, {}).items():
            value = _tuples(value)
            changes[key] = dataclasses.replace(getattr(self, key), **value) if key in SECTIONS else value
        return dataclasses.replace(self, **changes, for_tasks={}) if changes else self


SECTIONS = {"quantization": Quantization, "runtime": Runtime, "budgets": Budgets}
TOP_LEVEL_KEYS = {f.name for f in fields(Target)} - {"name"}
TASK_KEYS = TOP_LEVEL_KEYS - {"tasks", "for_tasks", "description"}  # what a for_tasks entry may change


def _tuples(value):
    """YAML lists as tuples, in a section's mapping too."""
    if isinstance(value, dict):
        return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    return tuple(value) if isinstance(value, list) else value


def known_targets(task: str | None = None) -> list[str]:
    """Names of the shipped targets (those that apply to `task`, when given)."""
    names = sorted(p.stem for p in TARGETS_DIR.glob("*.yaml"))
    return names if task is None else [name for name in names if load_target(name).applies_to(task)]


def load_targets_for(names: list[str], task: str) -> list[Target]:
    """The named targets, each checked to apply to `task`: one that does not is refused by
    name, with the list of those that do."""
    targets = [load_target(name) for name in names]
    for target in targets:
        if not target.applies_to(task):
            raise UserError(f"target '{target.name}' does not apply to {task} models (it serves "
                            f"{', '.join(target.tasks)}); for {task} choose from "
                            f"{', '.join(known_targets(task))}")
    return [target.for_task(task) for target in targets]


def load_target(name_or_path: str) -> Target:
    """A target by name (targets/<name>.yaml) or by the path of a YAML file."""
    path = _target_path(name_or_path)
    raw = _merged(path, seen=())
    try:
        return _build(raw, name=path.stem)
    except (TypeError, ValueError) as error:
        raise UserError(f"target file {path}: {error}") from error


def _target_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    path = TARGETS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UserError(f"unknown target '{name_or_path}'; known targets: "
                        f"{', '.join(known_targets())} (or pass a path to a target YAML file)")
    return path


def _merged(path: Path, *, seen: tuple[Path, ...]) -> dict:
    """The file's keys over those of its `base:` target, section by section."""
    raw = _read_yaml(path)
    base_name = raw.pop("base", None)
    if base_name is None:
        return raw
    if path.resolve() in seen:
        raise UserError(f"target file {path}: 'base' chain loops back to itself")
    base_path = _target_path(str(base_name))
    merged = _merged(base_path, seen=seen + (path.resolve(),))
    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"target file {path} is not valid YAML: {first_line(error)}") from error
    if not isinstance(raw, dict):
        raise UserError(f"target file {path} must be a mapping of keys to values")
    for key, value in raw.items():
        if key in SECTIONS:
            _check_section(path, key, value)
        elif key == "for_tasks":
            _check_for_tasks(path, value)
        elif key not in TOP_LEVEL_KEYS | {"base"}:
            raise UserError(f"target file {path}: unknown key '{key}'; known keys: "
                            f"{', '.join(sorted(TOP_LEVEL_KEYS | {'base'}))}")
    return raw


def _check_section(path: Path, name: str, raw) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise UserError(f"target file {path}: '{name}' must be a mapping")
    known = {f.name for f in fields(SECTIONS[name])}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"target file {path}: unknown key '{name}.{unknown[0]}'; "
                        f"known keys under '{name}': {', '.join(sorted(known))}")


def _check_for_tasks(path: Path, raw) -> None:
    if not isinstance(raw, dict):
        raise UserError(f"target file {path}: 'for_tasks' must map task names to target keys")
    for task, changes in raw.items():
        if task not in TASK_NAMES:
            raise UserError(f"target file {path}: for_tasks: unknown task '{task}'; known: {', '.join(TASK_NAMES)}")
        if not isinstance(changes, dict):
            raise UserError(f"target file {path}: for_tasks.{task} must be a mapping of target keys")
        for key, value in changes.items():
            if key in SECTIONS:
                _check_section(path, key, value)
            elif key not in TASK_KEYS:
                raise UserError(f"target file {path}: for_tasks.{task}: '{key}' cannot differ by task; "
                                f"known keys: {', '.join(sorted(TASK_KEYS))}")


def _build(raw: dict, *, name: str) -> Target:
    for key in ("description", "format", "precision"):
        if key not in raw:
            raise ValueError(f"missing key '{key}'")
    values = {"name": name}
    for key, value in raw.items():
        if key in SECTIONS:
            values[key] = SECTIONS[key](**_tuples(value or {}))
        elif key == "for_tasks":
            values[key] = value
        else:
            values[key] = tuple(value) if isinstance(value, list) else value
    return Target(**values)
