"""Check an exported model against the PyTorch model it came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgekd.errors import UserError, first_line
from edgekd.models import model_inputs

# Max abs logit difference allowed against PyTorch fp32, per precision.
LOGIT_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float  # largest |onnx - torch| logit over all checked rows
    agreement: float  # share of rows with the same predicted class
    rows: int  # rows checked
    shapes: list[tuple[int, int]]  # (batch, sequence) of each checked batch
    tolerance: float | None  # None: only agreement is reported (int8)

    @property
    def passed(self) -> bool:
        return self.tolerance is None or self.max_abs_diff <= self.tolerance


OPTIMIZATION_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                       "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def onnx_session(path: Path, *, threads: int = 1, optimization_level: str = "all",
                 ort_format: bool = False):
    """An onnxruntime CPU session; `ort_format` loads a .ort file the way ORT Mobile does."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                               OPTIMIZATION_LEVELS[optimization_level])
    if ort_format:
        options.add_session_config_entry("session.load_model_format", "ORT")
    return open_session(path, options)


def open_session(path: Path, options):
    """A CPU InferenceSession of `path`; a file onnxruntime cannot load is one clear error."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
        raise UserError(f"onnxruntime cannot load {path}: {first_line(error)[:200]}; "
                        "the file is corrupt or truncated, export it again") from error


def load_pte_method(path: Path):
    """The `forward` method of a .pte program; a file ExecuTorch cannot load is one clear error."""
    from executorch.runtime import Runtime

    try:
        return Runtime.get().load_program(Path(path)).load_method("forward")
    except Exception as error:  # ExecuTorch raises RuntimeError/ValueError with C++ text
        raise UserError(f"ExecuTorch cannot load {path}: {first_line(error)[:200]}; "
                        "the file is corrupt or truncated, export it again") from error


class ExecutorchSession:
    """An ExecuTorch method behind the `run(["logits"], feeds)` call of an onnxruntime session."""

    def __init__(self, path: Path, input_names: list[str]) -> None:
        self.method = load_pte_method(path)
        self.input_names = input_names

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = self.method.execute([torch.from_numpy(np.ascontiguousarray(feeds[name]))
                                       for name in self.input_names])
        return [np.asarray(outputs[0], dtype=np.float32)]


def random_batches(tokenizer, input_names: list[str], *, seed: int = 0,
                   shapes=((1, 7), (3, 16), (4, 33), (2, 64))) -> list[dict[str, np.ndarray]]:
    """Random token batches of several sizes and lengths, rows padded to different lengths."""
    generator = np.random.default_rng(seed)
    special = set(tokenizer.all_special_ids)
    vocabulary = np.array([i for i in range(min(tokenizer.vocab_size, 30000)) if i not in special])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    result = []
    for batch, length in shapes:
        ids = generator.choice(vocabulary, size=(batch, length))
        mask = np.ones((batch, length), dtype=np.int64)
        for row in range(1, batch):  # every row after the first is padded on the right
            keep = int(generator.integers(2, length + 1))
            ids[row, keep:] = pad_id
            mask[row, keep:] = 0
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask,
                 "token_type_ids": np.zeros((batch, length), dtype=np.int64)}
        result.append({name: feeds[name] for name in input_names})
    return result


@torch.no_grad()
def check_parity(session, model: torch.nn.Module, feeds_list: list[dict[str, np.ndarray]], *,
                 tolerance: float | None) -> Parity:
    """Compare session outputs with PyTorch logits on every batch in `feeds_list`."""
    model = model.eval().float()
    differences, agreements, shapes = [], [], []
    for feeds in feeds_list:
        reference = model(**model_inputs(model, {k: torch.from_numpy(v) for k, v in feeds.items()})).logits.numpy()
        (exported,) = session.run(["logits"], feeds)
        differences.append(float(np.abs(exported.astype(np.float32) - reference).max()))
        agreements.extend(exported.argmax(-1) == reference.argmax(-1))
        shapes.append(tuple(feeds["input_ids"].shape))
    return Parity(max_abs_diff=max(differences), agreement=float(np.mean(agreements)),
                  rows=len(agreements), shapes=shapes, tolerance=tolerance)
