"""Every model a bench compares, behind one small interface: logits over data, and a runner.

Formats and the runtime each is measured with:

    pytorch  the teacher and student folders, PyTorch fp32 (eager)
    onnx     model.onnx through onnxruntime's CPU execution provider
    ort      model.ort through onnxruntime with ONNX Runtime Mobile's session settings
    pte      model.pte through the ExecuTorch runtime (XNNPACK), when executorch is installed
    tflite   model.tflite through the ai-edge-litert interpreter (XNNPACK), when it is installed
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from edgekd.data import Encoded, batches
from edgekd.errors import UserError, first_line
from edgekd.sessions import ExecutorchSession, executorch_threads, open_session
from edgekd.manifest import MANIFEST, origin_of, read_manifest
from edgekd.models import model_inputs

ACCURACY_BATCH_SIZE = 32


@dataclass
class Candidate:
    """One model to measure: a row of the report."""

    name: str  # row name: teacher, student, student/<target>
    runtime: str  # what runs it, as the table shows it: "ort int8-dynamic" (ort = onnxruntime)
    format: str  # pytorch | onnx | ort | pte | tflite
    source: Path  # model folder (pytorch) or model file
    model: object  # torch.nn.Module, onnxruntime.InferenceSession or an ExecutorchSession
    input_names: list[str]  # the inputs the model takes (tokens or pixels), in order
    threads: int  # intra-op threads its latency is measured with
    precision: str = "fp32"
    target: str | None = None  # the export target (targets/<name>.yaml) it was built for
    config_folder: Path | None = None  # folder with config.json (sequence limit, labels)
    origin: str = "student"  # the model an artifact was exported from: teacher or student
    notes: list[str] = field(default_factory=list)
    tokenizer: object = None  # its own tokenizer (a trimmed vocabulary); None: the teacher's
    takes_text: bool = False  # the tokenizer is inside the graph: it takes raw strings


def torch_candidate(name: str, model: torch.nn.Module, source: Path | str, *,
                    threads: int) -> Candidate:
    names = list(model_inputs(model, {n: None for n in
                                      ("input_ids", "attention_mask", "token_type_ids", "pixel_values")}))
    if "pixel_values" in names:  # an image classifier (ViT's optional attention mask is not an input of ours)
        names = ["pixel_values"]
    return Candidate(name=name, runtime="pytorch fp32", format="pytorch", source=Path(source),
                     model=model, input_names=names, threads=threads, origin=name,
                     config_folder=Path(source) if Path(source).is_dir() else None)


def artifact_candidate(folder: Path, *, threads: int, teacher_folder: Path | None = None) -> Candidate:
    """The artifact exported into `folder`; raises Unavailable when its runtime is missing.

    Its row is named `<origin>/<target>`: `teacher/onnx-int8` when it was exported from
    `teacher_folder` (the no-distillation baseline), else `student/onnx-int8`.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    artifact_format = manifest.get("format", "onnx")
    if artifact_format not in LOADERS:
        raise UserError(f"{folder / MANIFEST}: format '{artifact_format}' is not one of "
                        f"{', '.join(LOADERS)}; export the artifact again with this edgekd")
    model_path = folder / str(manifest.get("model_file", "model.onnx"))
    if model_path.resolve().parent != folder.resolve():  # a manifest must not point elsewhere
        raise UserError(f"{folder / MANIFEST}: model_file must name a file inside {folder}, "
                        f"got '{manifest.get('model_file')}'; export the artifact again")
    if not model_path.is_file():
        raise UserError(f"{folder}: model file {model_path.name} named in {MANIFEST} is missing; "
                        "export the artifact again")
    model, input_names, runtime = LOADERS[artifact_format](model_path, manifest, threads)
    precision = manifest.get("precision", "fp32")
    origin = origin_of(manifest, teacher_folder)
    return Candidate(name=f"{origin}/{manifest.get('target', folder.name)}", origin=origin,
                     runtime=f"{runtime} {precision}", format=artifact_format,
                     source=model_path, model=model, input_names=input_names, threads=threads,
                     precision=precision, target=manifest.get("target"),
                     config_folder=folder if (folder / "config.json").is_file() else None)


def text_candidate(folder: Path, *, threads: int, teacher_folder: Path | None = None) -> Candidate | None:
    """The folder's model with the tokenizer inside (export --with-tokenizer), timed with
    tokenization included: row `<origin>/<target>+tokenizer`; None when there is none."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    entry = manifest.get("with_tokenizer")
    if not isinstance(entry, dict):
        return None
    path = folder / str(entry.get("model_file", ""))
    if path.resolve().parent != folder.resolve() or not path.is_file():
        raise UserError(f"{folder / MANIFEST}: the model with the tokenizer inside "
                        f"('{entry.get('model_file')}') is missing; export the artifact again")
    try:
        import onnxruntime_extensions  # noqa: F401
    except ImportError as error:
        raise Unavailable("onnxruntime-extensions is not installed; the model with the tokenizer "
                          "inside was skipped") from error
    session = _session(path, threads=threads, mobile=manifest.get("format") == "ort", custom_ops=True)
    origin = origin_of(manifest, teacher_folder)
    precision = manifest.get("precision", "fp32")
    runtime = "ort-mobile" if manifest.get("format") == "ort" else "ort"
    return Candidate(name=f"{origin}/{manifest.get('target', folder.name)}+tokenizer", origin=origin,
                     runtime=f"{runtime} {precision} + tokenizer", format=manifest.get("format", "onnx"),
                     source=path, model=session, input_names=[i.name for i in session.get_inputs()],
                     threads=threads, precision=precision, target=manifest.get("target"),
                     config_folder=folder if (folder / "config.json").is_file() else None,
                     takes_text=True)


class Unavailable(Exception):
    """The runtime an artifact needs is not installed: the row is skipped with a note."""


def _load_onnx(path: Path, manifest: dict, threads: int):
    session = _session(path, threads=threads, mobile=False)
    return session, [i.name for i in session.get_inputs()], "ort"


def _load_ort(path: Path, manifest: dict, threads: int):
    session = _session(path, threads=threads, mobile=True)
    return session, [i.name for i in session.get_inputs()], "ort-mobile"


def _session(path: Path, *, threads: int, mobile: bool, custom_ops: bool = False):
    import onnxruntime as ort

    from edgekd.sessions import register_extensions

    options = ort.SessionOptions()
    if custom_ops:
        register_extensions(options)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Models are timed interleaved on the same cores: a thread pool that keeps spinning
    # after its call would steal the cores of whichever model runs next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if mobile:
        # What ONNX Runtime Mobile does: read the flatbuffer format and run from its
        # bytes without copying the weights, with the optimisations baked in at conversion.
        options.add_session_config_entry("session.load_model_format", "ORT")
        options.add_session_config_entry("session.use_ort_model_bytes_directly", "1")
    return open_session(path, options)


def _load_pte(path: Path, manifest: dict, threads: int):
    try:
        import executorch.runtime  # noqa: F401 - only to know whether the runtime is installed
    except ImportError as error:
        raise Unavailable("the ExecuTorch runtime is not installed "
                          "(pip install executorch); .pte artifacts were skipped") from error
    executorch_threads(threads)  # one process-wide pool: the last .pte loaded sets its size
    names = list(manifest.get("inputs", {"input_ids": 0, "attention_mask": 0}))
    # a program planned for at most max_batch rows (XNNPACK's image programs) takes larger batches in parts
    max_batch = (manifest.get("delegation") or {}).get("max_batch")
    return ExecutorchSession(path, names, max_batch=max_batch), names, "executorch"


def _load_tflite(path: Path, manifest: dict, threads: int):
    from edgekd.sessions import LiteRTSession

    try:
        import ai_edge_litert.interpreter  # noqa: F401 - only to know whether the runtime is installed
    except ImportError as error:
        raise Unavailable("the LiteRT interpreter is not installed "
                          "(pip install 'edgekd[litert]'); .tflite artifacts were skipped") from error
    session = LiteRTSession(path, threads=threads)
    return session, session.input_names, "litert"


LOADERS: dict[str, Callable] = {"onnx": _load_onnx, "ort": _load_ort, "pte": _load_pte, "tflite": _load_tflite}


def feeds_of(candidate: Candidate, batch: dict) -> dict[str, np.ndarray]:
    """The arrays a candidate takes from a batch, or a UserError naming what is missing. Token
    types a tokenizer does not make (RoBERTa's, CamemBERT's) are all zeros, as the model itself
    takes them when none are given."""
    if "token_type_ids" in candidate.input_names and "token_type_ids" not in batch and "input_ids" in batch:
        batch = {**batch, "token_type_ids": np.zeros_like(np.asarray(batch["input_ids"]))}
    missing = [name for name in candidate.input_names if name not in batch]
    if missing:
        raise UserError(f"{candidate.name} needs inputs {missing} that the evaluation data does not "
                        "produce; export the model with the teacher's tokenizer, or bench it with "
                        "models of its own task")
    return {name: np.asarray(batch[name]) for name in candidate.input_names}


def predict(candidate: Candidate, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Logits for one batch of input arrays; (batch, num_labels)."""
    try:
        if candidate.format == "pytorch":
            with torch.inference_mode():
                tensors = {name: torch.from_numpy(array) for name, array in feeds.items()}
                return candidate.model(**tensors).logits.float().numpy()
        logits = candidate.model.run(["logits"], feeds)[0]  # onnxruntime or ExecutorchSession
        return np.array(logits, dtype=np.float32, copy=True)  # onnxruntime may reuse the buffer
    except Exception as error:  # wrong dtype, ids beyond the vocabulary, shapes out of range...
        raise UserError(f"{candidate.name} cannot run on the evaluation data: "
                        f"{first_line(error)[:200]}; it was made for another "
                        "tokenizer, vocabulary or input shape than the teacher's") from error


def text_logits(candidate: Candidate, texts: list[str], pairs: list[str] | None, *,
                progress: Callable[[int], None]) -> np.ndarray:
    """Logits of a model that takes raw strings over every text, in order; (rows, num_labels)."""
    from edgekd.sessions import PAIR_INPUT, string_feeds

    if (PAIR_INPUT in candidate.input_names) != (pairs is not None):
        takes, given = ("text pairs", "single texts") if pairs is None else ("single texts", "text pairs")
        raise UserError(f"{candidate.name} takes {takes} and the evaluation data has {given}; bench it on "
                        "data of the task it was exported for")
    outputs = []
    for start in range(0, len(texts), ACCURACY_BATCH_SIZE):
        chunk = texts[start:start + ACCURACY_BATCH_SIZE]
        feeds = string_feeds(chunk, None if pairs is None else pairs[start:start + ACCURACY_BATCH_SIZE])
        outputs.append(predict(candidate, {name: feeds[name] for name in candidate.input_names}))
        progress(len(chunk))
    return np.concatenate(outputs)


def logits_over(candidate: Candidate, encoded: Encoded, *, pad_token_id: int,
                progress: Callable[[int], None]) -> np.ndarray:
    """Logits over every row of `encoded`, in order; (rows, num_labels)."""
    # ExecuTorch programs are usually exported for batch 1: feed them one row at a time.
    batch_size = 1 if candidate.format == "pte" else ACCURACY_BATCH_SIZE
    outputs = []
    for batch in batches(encoded, batch_size=batch_size, pad_token_id=pad_token_id):
        outputs.append(predict(candidate, feeds_of(candidate, {k: v.numpy() for k, v in batch.items()})))
        progress(len(batch["index"]))
    return np.concatenate(outputs)


def runner(candidate: Candidate, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    """A call that runs one forward pass on fixed inputs, for latency measurement."""
    chosen = feeds_of(candidate, feeds)
    predict(candidate, chosen)  # a model that cannot take this shape fails here, in one clear line
    if candidate.format == "pytorch":
        tensors = {name: torch.from_numpy(array) for name, array in chosen.items()}
        model = candidate.model

        def run_torch():
            with torch.inference_mode():
                return model(**tensors).logits
        return run_torch
    session = candidate.model  # onnxruntime or ExecutorchSession
    return lambda: session.run(["logits"], chosen)
