"""How every task writes an export target: one folder per target, atomically.

OUT/<target>/ holds the model file (model.onnx, model.ort or model.pte), the student's
config.json and tokenizer files (so an ONNX folder loads with plain onnxruntime or
Optimum's ORTModel classes) and edgekd.json, the manifest (edgekd/manifest.py). A task
builds and checks the model file inside the folder (`write_target`'s `build`); everything
else, the size budget included, is done here the same way for every task, and a failed
check leaves no folder behind.
"""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgekd.errors import GateFailed, UserError, atomic_dir, first_line
from edgekd.exporting.mobile import convert_to_ort, required_operators
from edgekd.manifest import PROCESSOR_FILE, TOKENIZER_FILES, write_manifest
from edgekd.targets import Target
from edgekd.tasks import TASKS


@dataclass
class Built:
    """What a task's `build` wrote into the target folder and how it checked it."""

    model_file: str  # the file an app loads, in the folder
    inputs: dict  # graph input name -> axis names
    outputs: dict  # graph output name -> axis names
    parity: dict  # how the artifact compared with PyTorch
    details: dict = field(default_factory=dict)  # task-specific manifest fields
    weight_files: tuple[str, ...] = ()  # files beside model_file that hold its weights (model.onnx.data)
    checks: dict = field(default_factory=dict)  # the Artifact's own check fields (parity, accuracy, ...)


@dataclass(frozen=True)
class Artifact:
    """One exported, checked model, of any task: what `edgekd bench` measures."""

    target: str
    folder: Path
    model_file: Path
    format: str
    precision: str
    size_bytes: int  # the model file and its weight files
    seconds: float
    parity: object = None  # a classifier's logits against PyTorch (exporting/parity.Parity)
    accuracy: object = None  # a classifier's on the validation data (exporting/validation.Accuracy); None without
    nodes_kept_float: tuple[str, ...] = ()  # int8 nodes (a decoder's MatMuls) kept in float
    greedy_agreement: float | None = None  # a decoder's share of PyTorch's greedy tokens it generates
    perplexity_ratio: float | None = None  # a quantised decoder's perplexity over the fp32 export's

    @property
    def exact(self) -> bool:
        """Every greedy token a decoder generates is PyTorch's."""
        return self.greedy_agreement == 1.0

    @property
    def kept_float(self) -> int:
        return len(self.nodes_kept_float)


def write_target(target: Target, out: Path, *, task: str, student_dir: Path, model, tokenizer,
                 overwrite: bool, build: Callable[[Path], Built]) -> Artifact:
    """OUT/<target>/, written atomically: `build(folder)` writes and checks the model file;
    then the size budget, the config and tokenizer files and the manifest."""
    started = time.perf_counter()
    folder = Path(out) / target.name
    with atomic_dir(folder, overwrite=overwrite) as staging:
        with converter_failures(model, f"as {target.format}", target=target.name):
            built = build(staging)
        size = sum((staging / name).stat().st_size for name in (built.model_file, *built.weight_files))
        check_size(target, size)
        model.config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        seconds = time.perf_counter() - started
        write_manifest(staging, task=task, target=target, model_file=built.model_file, student_dir=student_dir,
                       inputs=built.inputs, outputs=built.outputs, parity=built.parity, size_bytes=size,
                       seconds=seconds, details=built.details)
    return Artifact(target=target.name, folder=folder, model_file=folder / built.model_file, format=target.format,
                    precision=target.precision, size_bytes=size, seconds=seconds, **built.checks)


@contextmanager
def converter_failures(model, what: str, *, target: str):
    """A converter or runtime that cannot serve an architecture (an operator it lacks, a graph it
    cannot run) is one line naming the model's class and the target, never a traceback."""
    try:
        yield
    except (UserError, OSError):
        raise  # refusals, and storage faults the command line names
    except Exception as error:  # noqa: BLE001 - any converter's or runtime's own failure
        raise UserError(f"target '{target}': {type(model).__name__} does not export and run {what} "
                        f"({first_line(error)[:200]}); choose another target") from error


def ship_onnx(target: Target, onnx_path: Path, folder: Path, details: dict) -> tuple[Path, tuple[str, ...]]:
    """The ONNX file as the target ships it in `folder`: as is (with its external weights,
    if any), or converted to ONNX Runtime Mobile's .ort with its required-operators config.
    Returns the model file and the weight files beside it."""
    if target.format == "ort":
        ort_path, config_path = convert_to_ort(onnx_path, folder, optimization_level=target.graph_optimization_level)
        details["required_operators_file"] = config_path.name
        details["required_operators"] = required_operators(config_path)
        return ort_path, ()
    if onnx_path.parent != Path(folder):
        for file in onnx_path.parent.glob(f"{onnx_path.name}*"):  # model.onnx, and model.onnx.data when large
            shutil.copyfile(file, Path(folder) / file.name)
    weights = tuple(p.name for p in Path(folder).glob(f"{onnx_path.name}.data"))
    return Path(folder) / onnx_path.name, weights


def check_size(target: Target, size: int) -> None:
    limit = target.budgets.max_size_mb
    if limit is not None and size > limit * 1e6:
        raise GateFailed(f"target '{target.name}': model file is {size / 1e6:.1f} MB, over its "
                         f"budget of {limit:g} MB; choose a smaller student or int8")


def check_request(student_dir: Path, targets: list[Target], out: Path, *, overwrite: bool,
                  task: str = "text-classification") -> None:
    """Everything that can be refused before minutes of work: folders, names, duplicates."""
    check_student_folder(student_dir, task=task)
    if not targets:
        raise UserError("no target given; pass --target (see edgekd targets)")
    names = [target.name for target in targets]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UserError(f"target {duplicates[0]} is given twice; pass each --target once")
    for target in targets:
        if (out / target.name).exists() and not overwrite:
            raise UserError(f"{out / target.name} already exists; "
                            "pass --overwrite to replace it or choose another --out")


def refuse_programs_with_strings(targets: list[Target]) -> None:
    """--with-tokenizer serves ONNX and .ort targets: an ExecuTorch program or a .tflite has no
    string operators."""
    refused = [target for target in targets if target.format in ("pte", "tflite")]
    if refused:
        kind = "an ExecuTorch program" if refused[0].format == "pte" else "a LiteRT model"
        raise UserError(f"--with-tokenizer serves ONNX and .ort targets; {refused[0].name} is {kind}, "
                        "which has no string operators: export it without --with-tokenizer")


def check_student_folder(student_dir: Path, *, task: str = "text-classification") -> None:
    """A clear error for a missing folder, or one without config.json or tokenizer
    (an image classifier: image processor) files."""
    student_dir = Path(student_dir)
    if not student_dir.is_dir():
        raise UserError(f"student folder {student_dir} does not exist; run edgekd distill first")
    if not (student_dir / "config.json").is_file():
        raise UserError(f"student folder {student_dir} has no config.json; pass a folder "
                        "written by edgekd distill or save_pretrained")
    if TASKS[task].inputs == "pixels":
        if not (student_dir / PROCESSOR_FILE).is_file():
            raise UserError(f"student folder {student_dir} has no {PROCESSOR_FILE}; save the image processor "
                            "beside the model with processor.save_pretrained")
        return
    if not any((student_dir / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"student folder {student_dir} has no tokenizer files "
                        f"({', '.join(TOKENIZER_FILES[:2])}); save the tokenizer beside the "
                        "model with tokenizer.save_pretrained")
