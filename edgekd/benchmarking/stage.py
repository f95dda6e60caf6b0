"""The bench stage, written once for every task: the teacher, the student and every exported
artifact measured on the same data, in one order, into one report (docs/report-schema.md,
report.SCHEMA_VERSION).

    models   each a Candidate (runtimes.py): PyTorch folders, ONNX, .ort and .pte files
    quality  the contract's: accuracy, F1, agreement and KL to the teacher for classifiers;
             perplexity and next-token agreement for decoders
    memory   peak resident memory, one child process per model, during the quality pass
    speed    the contract's timed call, every model interleaved (latency.interleaved)
    size     bytes on disk and parameters
    gates    limits from the command line or the target profiles (gates.py)

What differs by output contract is a `Measurement`: the classifiers' in
benchmarking/classifier.py, the decoders' in edgekd/lm/bench.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from edgekd.benchmarking.gates import GateLimits, check_gates
from edgekd.benchmarking.machine import machine_info, measurement_warnings
from edgekd.benchmarking.memory import MemoryProbe, meanwhile
from edgekd.benchmarking.report import SCHEMA_VERSION, add_same_target_speedups, skipped_warnings
from edgekd.benchmarking.runtimes import Candidate
from edgekd.models import count_parameters


class Measurement(Protocol):
    """What one output contract measures; every dict of `quality` and `speed` is keyed by row name."""

    task: str  # written in the report

    def candidates(self) -> tuple[list[Candidate], list[dict]]:
        """The teacher first, then the student and the artifacts; the artifacts skipped, with why."""

    def memory_feeds(self, candidates: list[Candidate]) -> dict[str, dict[str, np.ndarray]]:
        """The inputs each model's memory child runs on; a model left out is not probed."""

    def quality(self, candidates: list[Candidate]) -> dict[str, dict]:
        """Each row's `quality` (and what else the contract records of its outputs)."""

    def speed(self, candidates: list[Candidate]) -> dict[str, dict]:
        """Each row's `latency` (its `p50_ms` the headline) and the contract's other timings."""

    def compare(self, rows: list[dict]) -> None:
        """Each row's quality against its reference and against the teacher, added to the row."""

    def record(self, candidates: list[Candidate]) -> dict:
        """The report's `data` and `settings` (and any section of the contract's own)."""

    def warnings(self, report: dict) -> list[str]:
        """What the contract's figures warn of."""


def run(measurement: Measurement, *, gates: GateLimits = GateLimits()) -> dict:
    """Measure every model and return the report; gate results are recorded in it, and the
    caller decides whether a failure stops it (gates.raise_for_failed_gates)."""
    candidates, skipped = measurement.candidates()
    machine = machine_info()  # the machine's load before our own work: a busy machine shows up here
    probes = _memory_probes(candidates, measurement.memory_feeds(candidates))
    quality, memory = meanwhile(probes, lambda: measurement.quality(candidates))
    speed = measurement.speed(candidates)
    has_student = any(c.name == "student" for c in candidates)
    rows = [{**_described(c, has_student=has_student), **quality[c.name], "memory": memory.get(c.name),
             **speed[c.name]} for c in candidates]
    for row in rows:
        row["speedup"] = rows[0]["latency"]["p50_ms"] / row["latency"]["p50_ms"]
    measurement.compare(rows)
    add_same_target_speedups(rows)
    report = {"schema_version": SCHEMA_VERSION, "task": measurement.task, "rows": rows, "machine": machine,
              **measurement.record(candidates), "skipped": skipped}
    report["warnings"] = (measurement.warnings(report) + skipped_warnings(skipped)
                          + measurement_warnings(rows, machine))
    report["gates"] = check_gates(rows, gates)
    return report


def _reference(candidate: Candidate, *, has_student: bool) -> str | None:
    """The row a model is judged against: what it was made from (an artifact of the student: the
    student, when it is benched too; the student and the teacher's artifacts: the teacher)."""
    if candidate.name == "teacher":
        return None
    made_from_student = candidate.format != "pytorch" and candidate.origin == "student" and has_student
    return "student" if made_from_student else "teacher"


def _described(candidate: Candidate, *, has_student: bool) -> dict:
    return {"name": candidate.name, "runtime": candidate.runtime, "format": candidate.format,
            "precision": candidate.precision, "target": candidate.target, "source": str(candidate.source),
            "threads": candidate.threads, "reference": _reference(candidate, has_student=has_student),
            "params": _parameters(candidate), "size_bytes": _size(candidate)}


def _memory_probes(candidates: list[Candidate], feeds: dict[str, dict]) -> dict[str, MemoryProbe]:
    probes = {}
    for candidate in candidates:
        # PyTorch models load from their config folder (a .gguf teacher's: the folder it was read into)
        source = candidate.config_folder if candidate.format == "pytorch" else candidate.source
        if candidate.name not in feeds or source is None:
            continue  # not probed: a hub id (the child would need the hub), a model the child cannot feed
        probes[candidate.name] = MemoryProbe(model_format=candidate.format, source=source,
                                             input_names=candidate.input_names, feeds=feeds[candidate.name],
                                             threads=candidate.threads)
    return probes


def _parameters(candidate: Candidate) -> int | None:
    if candidate.format == "pytorch":
        return count_parameters(candidate.model)
    if candidate.format != "onnx":
        return None  # .ort/.pte: the runtime does not expose its weights to count them
    import onnx

    graph = onnx.load(str(candidate.source), load_external_data=False).graph
    return int(sum(np.prod(t.dims) for t in graph.initializer if len(t.dims) >= 1))


def _size(candidate: Candidate) -> int:
    """Bytes on disk: the model file (with its external weights), or the weight files of a
    PyTorch folder."""
    path = Path(candidate.source)
    if path.is_file():
        external = path.with_name(f"{path.name}.data")
        return path.stat().st_size + (external.stat().st_size if external.is_file() else 0)
    weights = [p for p in path.glob("*") if p.suffix in (".safetensors", ".bin")] if path.is_dir() else []
    if weights:
        return sum(p.stat().st_size for p in weights)
    # A hub id: the bytes of the parameters in memory stand in for the download.
    return sum(p.numel() * p.element_size() for p in candidate.model.parameters())
