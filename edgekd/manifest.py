"""The artifact manifest, `edgekd.json`: one schema for every task, written by export, read
by bench (and by anyone: it is plain JSON beside the model file).

Fields every manifest has: schema_version, task, target, description, format, precision,
model_file, source_student, source_sha256, inputs, outputs, parity, size_bytes, runtime,
budgets, seconds, versions. A task adds its own checks beside them (a classifier's
`accuracy` and `nodes_kept_float`; a causal LM's `perplexity_gate` and `int8_search`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from edgekd.errors import UserError, atomic_write_text

# what an artifact folder holds beside its model file, so that it runs without the student folder
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")
PROCESSOR_FILE = "preprocessor_config.json"  # an image classifier's image processor

MANIFEST = "edgekd.json"
SCHEMA_VERSION = 3  # 3: `task` field; causal LMs share the schema


def write_manifest(folder: Path, *, task: str, target, model_file: str, student_dir: Path,
                   inputs: dict, outputs: dict, parity: dict, size_bytes: int, seconds: float,
                   details: dict) -> dict:
    """Write OUT/<target>/edgekd.json atomically; returns what was written."""
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "task": task,
        "target": target.name,
        "description": target.description,
        "format": target.format,
        "precision": target.precision,
        "model_file": model_file,
        "source_student": str(Path(student_dir).resolve()),
        "source_sha256": weights_hash(student_dir),
        "inputs": inputs,
        "outputs": outputs,
        "parity": parity,
        "size_bytes": size_bytes,
        "runtime": asdict(target.runtime),
        "budgets": asdict(target.budgets),
        **details,
        "seconds": round(seconds, 2),
        "versions": versions(),
    }
    atomic_write_text(Path(folder) / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict:
    """The manifest of an artifact folder, with a clear error when it is missing or broken.
    Manifests written before the `task` field are classifiers'."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise UserError(f"{folder} has no {MANIFEST}; it is not an edgekd artifact folder "
                        "(run edgekd export first)") from error
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is corrupt ({error.msg}); export the artifact again") from error
    if not isinstance(manifest, dict):
        raise UserError(f"{path} is not an edgekd manifest (not a JSON object); export the artifact again")
    manifest.setdefault("task", "text-classification")
    return manifest


def artifact_folders(root: Path) -> list[Path]:
    """The artifact folders an --artifacts folder names: itself when it is one, else its
    sub-folders with a manifest."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"artifacts folder {root} does not exist; run edgekd export first")
    if (root / MANIFEST).is_file():
        return [root]
    folders = sorted(p.parent for p in root.glob(f"*/{MANIFEST}"))
    if not folders:
        raise UserError(f"{root} holds no exported artifact (no */{MANIFEST}); "
                        "point --artifacts at the --out folder of edgekd export")
    return folders


def origin_of(manifest: dict, teacher: Path | str | None) -> str:
    """`teacher` when the artifact was exported from the teacher folder itself (the
    no-distillation baseline), else `student`."""
    source = manifest.get("source_student")
    from_teacher = teacher is not None and source is not None and Path(source).resolve() == Path(teacher).resolve()
    return "teacher" if from_teacher else "student"


def versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    import transformers

    found = {"torch": torch.__version__, "onnx": onnx.__version__,
             "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__}
    try:
        from importlib.metadata import version

        found["executorch"] = version("executorch")
    except Exception:  # PackageNotFoundError: ExecuTorch is optional
        pass
    return found


def weights_hash(student_dir: Path) -> str:
    """SHA-256 over the student's safetensors files, in name order."""
    digest = hashlib.sha256()
    for file in sorted(Path(student_dir).glob("*.safetensors")):
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
