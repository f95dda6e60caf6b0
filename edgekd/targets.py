"""Device targets are data: `targets/<name>.yaml` says what to build and how to judge it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from edgekd.errors import UserError

TARGETS_DIR = Path(__file__).resolve().parent.parent / "targets"
FORMATS = ("onnx", "ort", "pte")
PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static")


@dataclass(frozen=True)
class Quantization:
    """How int8 models are made (onnxruntime.quantization)."""

    weight_type: str = "int8"  # int8 or uint8
    per_channel: bool = False  # one scale per output channel instead of per tensor
    reduce_range: bool = False  # 7-bit weights, for CPUs without VNNI that saturate
    op_types: tuple[str, ...] = ("MatMul", "Gemm")  # operator types to quantise


@dataclass(frozen=True)
class Runtime:
    threads: int = 1  # intra-op threads when benchmarking (1 = one phone core)


@dataclass(frozen=True)
class Budgets:
    max_accuracy_drop: float | None = None  # points of accuracy lost vs the fp32 student
    max_latency_ms: float | None = None  # p50 at batch 1
    max_size_mb: float | None = None  # model file size


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    format: str
    precision: str
    opset: int = 17
    quantization: Quantization = field(default_factory=Quantization)
    runtime: Runtime = field(default_factory=Runtime)
    budgets: Budgets = field(default_factory=Budgets)


def known_targets() -> list[str]:
    return sorted(p.stem for p in TARGETS_DIR.glob("*.yaml"))


def load_target(name_or_path: str) -> Target:
    """A target by name (targets/<name>.yaml) or by the path of a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        path = TARGETS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UserError(f"unknown target '{name_or_path}'; known targets: "
                        f"{', '.join(known_targets())} (or pass a path to a target YAML file)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"target file {path} is not valid YAML: {str(error).splitlines()[0]}") from error
    if not isinstance(raw, dict):
        raise UserError(f"target file {path} must be a mapping of keys to values")
    return _build(path, raw)


def _build(path: Path, raw: dict) -> Target:
    sections = {"quantization": Quantization, "runtime": Runtime, "budgets": Budgets}
    values = {"name": path.stem}
    for key, value in raw.items():
        if key in sections:
            values[key] = _section(path, key, sections[key], value or {})
        elif key in {f.name for f in fields(Target)} - {"name"}:
            values[key] = value
        else:
            raise UserError(f"target file {path}: unknown key '{key}'; known keys: "
                            f"{', '.join(sorted({f.name for f in fields(Target)} - {'name'}))}")
    for key in ("description", "format", "precision"):
        if key not in values:
            raise UserError(f"target file {path}: missing key '{key}'")
    if values["format"] not in FORMATS:
        raise UserError(f"target file {path}: format '{values['format']}' is not one of {FORMATS}")
    if values["precision"] not in PRECISIONS:
        raise UserError(f"target file {path}: precision '{values['precision']}' "
                        f"is not one of {PRECISIONS}")
    return Target(**values)


def _section(path: Path, name: str, cls, raw: dict):
    if not isinstance(raw, dict):
        raise UserError(f"target file {path}: '{name}' must be a mapping")
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise UserError(f"target file {path}: unknown key '{name}.{sorted(unknown)[0]}'; "
                        f"known keys under '{name}': {', '.join(sorted(known))}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
