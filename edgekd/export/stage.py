"""The export stage: a student folder in, one checked artifact folder per target out.

OUT/<target>/ holds model.onnx, the student's config.json and tokenizer files (so the
folder loads with plain onnxruntime or Optimum's ORTModel classes) and edgekd.json, a
manifest with the target, precision, versions, parity results and size.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edgekd.errors import UserError, atomic_dir, atomic_write_text
from edgekd.export.onnx import export_onnx
from edgekd.export.parity import LOGIT_TOLERANCE, Parity, check_parity, onnx_session, random_batches
from edgekd.export.quantize import quantize_dynamic
from edgekd.models import load_classifier
from edgekd.targets import Target

MODEL_FILE = "model.onnx"
MANIFEST = "edgekd.json"


@dataclass(frozen=True)
class Artifact:
    """One exported, checked model: what `edgekd bench` measures."""

    target: str
    folder: Path
    model_file: Path
    format: str
    precision: str
    size_bytes: int
    parity: Parity
    seconds: float


def export(student_dir: Path, *, targets: list[Target], out: Path,
           overwrite: bool = False) -> list[Artifact]:
    """Export the student in `student_dir` for every target into `out/<target>/`."""
    student_dir = Path(student_dir)
    model, tokenizer = load_classifier(student_dir, role="student")
    for target in targets:
        if target.format != "onnx" or target.precision not in ("fp32", "int8-dynamic"):
            raise UserError(f"target '{target.name}' ({target.format}, {target.precision}) "
                            "is not supported by this exporter yet")
        if (Path(out) / target.name).exists() and not overwrite:
            raise UserError(f"{Path(out) / target.name} already exists; "
                            "pass --overwrite to replace it or choose another --out")
    artifacts = []
    with tempfile.TemporaryDirectory(prefix="edgekd-export-") as scratch:
        fp32_path = Path(scratch) / "fp32.onnx"
        input_names = export_onnx(model, tokenizer, fp32_path, opset=max(t.opset for t in targets))
        for target in targets:
            artifacts.append(_export_one(target, fp32_path, input_names, model, tokenizer,
                                         student_dir, Path(out), overwrite=overwrite))
    return artifacts


def _export_one(target: Target, fp32_path: Path, input_names: list[str], model, tokenizer,
                student_dir: Path, out: Path, *, overwrite: bool) -> Artifact:
    started = time.perf_counter()
    with atomic_dir(out / target.name, overwrite=overwrite) as staging:
        model_path = staging / MODEL_FILE
        if target.precision == "fp32":
            shutil.copyfile(fp32_path, model_path)
        else:
            quantize_dynamic(fp32_path, model_path, target.quantization)
        parity = check_parity(onnx_session(model_path), model,
                              random_batches(tokenizer, input_names),
                              tolerance=LOGIT_TOLERANCE.get(target.precision))
        if not parity.passed:
            raise UserError(f"target '{target.name}': exported logits differ from PyTorch by "
                            f"{parity.max_abs_diff:.2e} (> {parity.tolerance:.0e}); "
                            "the export is wrong, report it with the model's config")
        model.config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        size = model_path.stat().st_size
        _write_manifest(staging / MANIFEST, target, student_dir, input_names, parity, size)
    return Artifact(target=target.name, folder=out / target.name,
                    model_file=out / target.name / MODEL_FILE, format=target.format,
                    precision=target.precision, size_bytes=size, parity=parity,
                    seconds=time.perf_counter() - started)


def _write_manifest(path: Path, target: Target, student_dir: Path, input_names: list[str],
                    parity: Parity, size: int) -> None:
    import onnx
    import onnxruntime
    import torch
    import transformers

    manifest = {
        "schema_version": 1,
        "target": target.name,
        "format": target.format,
        "precision": target.precision,
        "opset": target.opset,
        "model_file": MODEL_FILE,
        "source_student": str(student_dir.resolve()),
        "source_sha256": _weights_hash(student_dir),
        "inputs": {name: ["batch", "sequence"] for name in input_names},
        "outputs": {"logits": ["batch", "num_labels"]},
        "parity": asdict(parity),
        "size_bytes": size,
        "nodes_kept_float": [],
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__,
                     "transformers": transformers.__version__},
    }
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")


def _weights_hash(student_dir: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(student_dir.glob("*.safetensors")):
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict:
    """The manifest of an artifact folder, with a clear error when it is missing or broken."""
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as error:
        raise UserError(f"{folder} has no {MANIFEST}; it is not an edgekd artifact folder "
                        "(run edgekd export first)") from error
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is corrupt ({error.msg}); export the artifact again") from error
