"""A student sized to a latency budget on this machine (`edgekd distill --latency-budget-ms`).

ShapeCandidate shapes (layers x hidden width, heads and FFN shrunk with the width) are built with
random weights (timing does not depend on the weights), converted to the budget's target
(an ONNX target: fp32, fp16, dynamic int8 or int4) and timed with onnxruntime at the
target's thread count, batch 1: a classifier's forward pass at `--sequence-length` tokens, a
causal LM's decode step after a cache of that many tokens. Latency grows with depth, so each
width's deepest shape within the budget is found by bisection over the layer count. The most
capable shape that fits (the most parameters outside the embeddings) is chosen and then
sliced from the teacher like any `--student-config`. Timings are cached per machine,
onnxruntime version, target, architecture and shape, with a checksum (edgekd/integrity.py).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn

from edgekd.errors import UserError, exclusive
from edgekd.integrity import read_sealed_json, write_sealed_json
from edgekd.tasks import is_decoder

WIDTH_FRACTIONS = (1.0, 0.75, 0.5, 0.375, 0.25)
TIMED_RUNS = 15
BUDGET_PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int4")


@dataclass(frozen=True)
class ShapeCandidate:
    layers: int
    hidden: int
    heads: int
    intermediate: int

    @property
    def spec(self) -> str:
        return f"layers={self.layers},hidden={self.hidden},heads={self.heads},intermediate={self.intermediate}"


def candidates_by_width(teacher: nn.Module) -> list[list[ShapeCandidate]]:
    """For each width (largest first), the shapes of 1 to all the teacher's layers."""
    from edgekd.models import find_layer_list, head_size
    from edgekd.slicing import _intermediate

    config = teacher.config
    head_dim, heads = head_size(config), config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    per_group = heads // kv_heads
    layers, intermediate = len(find_layer_list(teacher)[1]), _intermediate(config)
    inner_is_hidden = head_dim * heads == config.hidden_size
    widths, seen = [], set()
    for fraction in WIDTH_FRACTIONS:
        kept_heads = max(per_group, round(heads * fraction / per_group) * per_group)
        hidden = kept_heads * head_dim if inner_is_hidden else max(head_dim, round(config.hidden_size * fraction / 8) * 8)
        shape = (hidden, kept_heads)
        if shape in seen:
            continue
        seen.add(shape)
        ffn = max(8, round(intermediate * hidden / config.hidden_size / 8) * 8)
        widths.append([ShapeCandidate(n, hidden, kept_heads, ffn) for n in range(1, layers + 1)])
    return widths


def non_embedding_parameters(teacher: nn.Module, candidate: ShapeCandidate) -> int:
    """What the shape can hold: attention and FFN weights of every layer."""
    from edgekd.models import head_size

    config = teacher.config
    heads = config.num_attention_heads
    kv_fraction = (getattr(config, "num_key_value_heads", None) or heads) / heads
    inner = candidate.heads * head_size(config)
    attention = candidate.hidden * inner * (2 + 2 * kv_fraction)
    projections = 3 if hasattr(config, "num_key_value_heads") else 2  # gated FFN: gate, up, down
    return int(candidate.layers * (attention + projections * candidate.hidden * candidate.intermediate))


def pick(widths: list[list[ShapeCandidate]], *, budget_ms: float, latency: Callable[[ShapeCandidate], float],
         capacity: Callable[[ShapeCandidate], int]) -> tuple[ShapeCandidate | None, list[dict]]:
    """The most capable candidate within `budget_ms` and every measurement made: per width,
    a bisection over depth for the deepest shape that fits."""
    measured: dict[ShapeCandidate, float] = {}

    def time_of(candidate: ShapeCandidate) -> float:
        if candidate not in measured:
            measured[candidate] = latency(candidate)
        return measured[candidate]

    fitting = []
    for shapes in widths:
        low, high = 0, len(shapes) - 1
        if time_of(shapes[0]) > budget_ms:
            continue  # not even one layer of this width fits
        while low < high:  # shapes[low] fits; find the deepest that does
            middle = (low + high + 1) // 2
            if time_of(shapes[middle]) <= budget_ms:
                low = middle
            else:
                high = middle - 1
        fitting.append(shapes[low])
    chosen = max(fitting, key=lambda c: (capacity(c), c.layers), default=None)
    table = [{"shape": c.spec, "layers": c.layers, "hidden": c.hidden, "latency_ms": ms, "fits": ms <= budget_ms,
              "parameters": capacity(c), "chosen": c == chosen} for c, ms in measured.items()]
    return chosen, sorted(table, key=lambda row: (-row["hidden"], row["layers"]))


# ---------------------------------------------------------------------------- timing

def shape_latency(teacher: nn.Module, tokenizer, candidate: ShapeCandidate, *, task: str, target,
                  sequence_length: int, cache_folder: Path | None = None) -> float:
    """Median ms of one batch-1 call of `candidate` exported to `target` (cached)."""
    from edgekd.benchmarking.machine import machine_info

    machine = machine_info()
    architecture = hashlib.sha256(json.dumps(teacher.config.to_dict(), sort_keys=True, default=str)
                                  .encode()).hexdigest()[:12]
    key = (f"{machine['cpu']}|{','.join(machine['flags'])}|ort={machine['onnxruntime']}|{target.name}|"
           f"{task}|{architecture}|{candidate.spec}|tokens={sequence_length}")
    if cache_folder is None:
        from edgekd.config import cache_dir

        cache_folder = cache_dir()
    path = Path(cache_folder) / "machine" / "shape-latency.json"
    # one reader-measurer-writer at a time, as for the matmul peak: two timings at once would distort both
    with exclusive(path, wait=True, what="shape latency cache"):
        cached = read_sealed_json(path, what="shape latency cache")
        if key in cached:
            return float(cached[key])
        milliseconds = _measure(teacher, tokenizer, candidate, task=task, target=target,
                                sequence_length=sequence_length)
        write_sealed_json(path, {**cached, key: milliseconds})
    return milliseconds


def _measure(teacher, tokenizer, candidate: ShapeCandidate, *, task: str, target, sequence_length: int) -> float:
    from edgekd.exporting.onnx import export_onnx
    from edgekd.exporting.quantize import build_precision, quantize_dynamic
    from edgekd.sessions import onnx_session

    model = timing_model(teacher, candidate)
    with tempfile.TemporaryDirectory(prefix="edgekd-sizing-") as scratch:
        fp32 = Path(scratch) / "fp32.onnx"
        if is_decoder(task):
            from edgekd.lm.export import export_fp32

            export_fp32(model, fp32)
        else:
            export_onnx(model, tokenizer, fp32, opset=target.opset)
        path = Path(scratch) / "model.onnx"
        build_precision(target.precision, fp32, path,
                        int8=lambda source, destination: quantize_dynamic(source, destination, target.quantization))
        session = onnx_session(path, threads=target.runtime.threads)
        feeds = _feeds(session, model, task=task, tokens=sequence_length)
        for _ in range(3):
            session.run(None, feeds)
        seconds = []
        for _ in range(TIMED_RUNS):
            started = time.perf_counter()
            session.run(None, feeds)
            seconds.append(time.perf_counter() - started)
    return 1000 * statistics.median(seconds)


def timing_model(teacher: nn.Module, candidate: ShapeCandidate) -> nn.Module:
    """A random-weight model of the shape a student sliced to `candidate` would have (or, for
    an architecture slicing does not cover, of models.shrunk_student's shape)."""
    from edgekd.models import cut_per_layer_fields, parse_student_config, shrunk_student, student_from_config
    from edgekd.slicing import family_of, shaped_config, student_shape

    family = family_of(teacher)
    if family is None:
        return shrunk_student(teacher, candidate.spec)
    values = parse_student_config(candidate.spec)
    config = shaped_config(teacher, family, student_shape(teacher, family, values))
    cut_per_layer_fields(config, list(range(candidate.layers)), total=config.num_hidden_layers)
    config.num_hidden_layers = candidate.layers
    return student_from_config(teacher, config, attn_implementation="eager").eval()


def _feeds(session, model, *, task: str, tokens: int) -> dict[str, np.ndarray]:
    names = session.input_names
    if is_decoder(task):  # one new token after a cache of `tokens`
        from edgekd.lm.export import cache_shape

        kv_heads, head_dim = cache_shape(model.config)
        feeds = {"input_ids": np.ones((1, 1), dtype=np.int64),
                 "attention_mask": np.ones((1, tokens + 1), dtype=np.int64)}
        feeds.update({name: np.zeros((1, kv_heads, tokens, head_dim), dtype=np.float32)
                      for name in names if name.startswith("past_")})
        return feeds
    shapes = {"input_ids": np.ones, "attention_mask": np.ones, "token_type_ids": np.zeros}
    return {name: shapes[name]((1, tokens), dtype=np.int64) for name in names if name in shapes}


# ---------------------------------------------------------------------------- the command

def sized_spec(teacher: nn.Module, tokenizer, *, task: str, budget_ms: float, target_name: str,
               sequence_length: int, show: Callable[[str], None]) -> str:
    """The `--student-config` of the most capable shape within `budget_ms` on `target_name`."""
    from edgekd.targets import load_targets_for

    if not budget_ms > 0:
        raise UserError(f"--latency-budget-ms must be positive, got {budget_ms}")
    positions = getattr(teacher.config, "max_position_embeddings", None) or sequence_length
    if not 2 <= sequence_length <= positions:
        raise UserError(f"--sequence-length {sequence_length} is out of range for this teacher; choose 2 to "
                        f"{positions} tokens (its positions)")
    (target,) = load_targets_for([target_name], task)
    if target.format != "onnx" or target.precision not in BUDGET_PRECISIONS:
        raise UserError(f"--budget-target {target_name} is a {target.format} {target.precision} target; a latency "
                        "budget is measured on an ONNX target of fp32, fp16, int8-dynamic or int4 precision, "
                        "e.g. onnx-int8")
    show(f"sizing: timing candidate shapes on {target.name} ({target.runtime.threads} thread(s), batch 1, "
         f"{sequence_length} tokens); budget {budget_ms:g} ms")
    chosen, table = pick(candidates_by_width(teacher), budget_ms=budget_ms,
                         latency=lambda c: shape_latency(teacher, tokenizer, c, task=task, target=target,
                                                         sequence_length=sequence_length),
                         capacity=lambda c: non_embedding_parameters(teacher, c))
    for row in table:
        show(f"  {row['shape']:<52} {row['latency_ms']:8.2f} ms  {row['parameters'] / 1e6:7.2f}M"
             f"{'  <- chosen' if row['chosen'] else '' if row['fits'] else '  over budget'}")
    if chosen is None:
        fastest = min(table, key=lambda row: row["latency_ms"])
        raise UserError(f"no student shape runs within {budget_ms:g} ms on {target.name} here: the smallest "
                        f"measured ({fastest['shape']}) takes {fastest['latency_ms']:.2f} ms; raise "
                        "--latency-budget-ms, shorten --sequence-length or choose a faster --budget-target")
    return chosen.spec
