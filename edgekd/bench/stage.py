"""The bench stage: teacher, student and every exported artifact on the same data.

Quality: accuracy, macro-F1, agreement with the teacher, mean KL to the teacher.
Latency: batch 1, fixed sequence length, measured interleaved at the given thread count.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from edgekd.bench.accuracy import quality, torch_logits
from edgekd.bench.latency import measure_interleaved, summarize
from edgekd.bench.report import SCHEMA_VERSION
from edgekd.data import Encoded, TextDataset, batches, encode
from edgekd.errors import UserError
from edgekd.export.parity import onnx_session
from edgekd.export.stage import MANIFEST, read_manifest
from edgekd.models import count_parameters, load_classifier, model_inputs
from edgekd.progress import progress_bar


def bench(*, teacher: str | Path, student: Path | None, artifacts: Path | None,
          data: TextDataset, max_length: int = 128, sequence_length: int = 128,
          threads: int = 1, repeats: int = 50, show_progress: bool = True,
          teacher_model=None) -> dict:
    """Measure every model on `data`; returns the report as a dict (see report.SCHEMA_VERSION)."""
    if len(data) == 0:
        raise UserError("the evaluation data is empty; give at least one labelled example")
    teacher_model, tokenizer = (teacher_model if teacher_model is not None
                                else load_classifier(teacher, role="teacher"))
    if sequence_length > _max_positions(teacher_model.config):
        raise UserError(f"--sequence-length {sequence_length} is beyond the model's limit of "
                        f"{_max_positions(teacher_model.config)} tokens; choose a smaller one")
    candidates = [("teacher", "pytorch fp32", teacher_model, teacher)]
    if student is not None:
        candidates.append(("student", "pytorch fp32",
                           load_classifier(student, role="student")[0], student))
    for folder in _artifact_folders(artifacts):
        manifest = read_manifest(folder)
        session = onnx_session(folder / manifest["model_file"], threads=threads)
        candidates.append((f"student/{manifest['target']}", f"ort {manifest['precision']}",
                           session, folder / manifest["model_file"]))

    encoded = encode(data, tokenizer, max_length=max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    labels = np.array([-1 if label is None else label for label in data.labels])
    logits = {}
    with progress_bar("evaluating", total=len(candidates) * len(data),
                      enabled=show_progress) as advance:
        for name, _, model, _ in candidates:
            logits[name] = _logits(model, encoded, pad, advance)

    latency_input = _latency_input(tokenizer, data.texts[0], sequence_length)
    runners = {name: _runner(model, latency_input) for name, _, model, _ in candidates}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with progress_bar("latency (interleaved)", total=repeats, enabled=show_progress) as advance:
            seconds = measure_interleaved(runners, repeats=repeats, progress=advance)
    finally:
        torch.set_num_threads(previous_threads)

    teacher_p50 = float(np.median(seconds["teacher"]))
    rows = []
    for name, runtime, model, source in candidates:
        row_quality = quality(logits[name], labels,
                              teacher_logits=None if name == "teacher" else logits["teacher"])
        if name == "teacher":
            row_quality.update(agreement=1.0, kl_to_teacher=0.0)
        rows.append({"name": name, "runtime": runtime, "source": str(source),
                     "quality": row_quality, "params": _parameters(model, source),
                     "size_bytes": _size(source), "latency": summarize(seconds[name]),
                     "speedup": teacher_p50 / float(np.median(seconds[name]))})
    return {"schema_version": SCHEMA_VERSION, "rows": rows, "machine": machine_info(),
            "data": {"rows": len(data), "labels": data.label_names},
            "settings": {"max_length": max_length, "sequence_length": sequence_length,
                         "threads": threads, "repeats": repeats, "batch_size": 1}}


def _max_positions(config) -> int:
    return int(getattr(config, "max_position_embeddings", 512) or 512)


def _artifact_folders(artifacts: Path | None) -> list[Path]:
    if artifacts is None:
        return []
    artifacts = Path(artifacts)
    if not artifacts.is_dir():
        raise UserError(f"artifacts folder {artifacts} does not exist; run edgekd export first")
    if (artifacts / MANIFEST).is_file():
        return [artifacts]
    folders = sorted(p.parent for p in artifacts.glob(f"*/{MANIFEST}"))
    if not folders:
        raise UserError(f"{artifacts} holds no exported artifact (no */{MANIFEST}); "
                        "point --artifacts at the --out folder of edgekd export")
    return folders


def _logits(model, encoded: Encoded, pad: int, advance: Callable) -> np.ndarray:
    if isinstance(model, torch.nn.Module):
        return torch_logits(model, encoded, pad_token_id=pad, progress=advance)
    names = [i.name for i in model.get_inputs()]
    outputs = []
    for batch in batches(encoded, batch_size=32, pad_token_id=pad):
        missing = [n for n in names if n not in batch]
        if missing:
            raise UserError(f"the exported model needs inputs {missing} that the data's "
                            "tokenizer does not produce; export with the teacher's tokenizer")
        (out,) = model.run(["logits"], {n: batch[n].numpy() for n in names})
        outputs.append(out.astype(np.float32))
        advance(len(batch["index"]))
    return np.concatenate(outputs)


def _latency_input(tokenizer, text: str, length: int) -> dict[str, torch.Tensor]:
    """A real text, truncated or padded to exactly `length` tokens, batch 1."""
    encoded = tokenizer([text], truncation=True, max_length=length, padding="max_length",
                        return_tensors="pt")
    return dict(encoded)


def _runner(model, inputs: dict[str, torch.Tensor]) -> Callable[[], object]:
    if isinstance(model, torch.nn.Module):
        model_feeds = model_inputs(model, inputs)

        def run_torch():
            with torch.inference_mode():
                return model(**model_feeds).logits
        return run_torch
    feeds = {i.name: inputs[i.name].numpy() for i in model.get_inputs()}
    return lambda: model.run(["logits"], feeds)


def _parameters(model, source) -> int:
    if isinstance(model, torch.nn.Module):
        return count_parameters(model)
    import onnx

    graph = onnx.load(str(source), load_external_data=False).graph
    return int(sum(np.prod(t.dims) for t in graph.initializer if len(t.dims) >= 1))


def _size(source) -> int:
    path = Path(source)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.glob("*.safetensors")) if path.is_dir() else 0


def machine_info() -> dict:
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags_line = next((l for l in Path("/proc/cpuinfo").read_text().splitlines()
                           if l.startswith(("flags", "Features"))), "")
        flags = sorted(set(flags_line.split(":", 1)[-1].split()) &
                       {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "fma"})
    except OSError:
        flags = []
    return {"cpu": cpu, "flags": flags, "cores": os.cpu_count(), "machine": platform.machine(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version()}
