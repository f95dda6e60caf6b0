"""The bench stage: teacher, student and every exported artifact on the same data, for text
and image classifiers alike (what each model is fed: edgekd/benchmarking/feeds.py).

    quality     accuracy, macro-F1, agreement with the teacher, mean KL to the teacher
                (with more than 5 classes: top-5 accuracy too)
    latency     p50/p90/p99 and IQR at batch 1 for each sequence length (images: at each
                model's own input size), and throughput at a larger batch; warm-up
                excluded, every model measured interleaved
    size        bytes on disk, parameters, peak resident memory (one child process each)
    efficiency  matrix-multiply and convolution operations per inference against the machine's peak
    gates       limits from the command line or the target profiles (see gates.py)

The report it returns is documented in docs/report-schema.md (report.SCHEMA_VERSION).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edgekd.benchmarking import roofline
from edgekd.benchmarking.feeds import PixelFeeds, TextFeeds
from edgekd.metrics import quality
from edgekd.benchmarking.gates import GateLimits, check_gates
from edgekd.benchmarking.latency import MAX_RELATIVE_IQR, measure_interleaved, noisy, summarize, throughput
from edgekd.benchmarking.machine import machine_info, measurement_warnings
from edgekd.benchmarking.memory import MemoryProbe, meanwhile
from edgekd.benchmarking.report import SCHEMA_VERSION, add_same_target_speedups, skipped_warnings
from edgekd.benchmarking.runtimes import Candidate, Unavailable, artifact_candidate, runner, text_candidate, torch_candidate
from edgekd.data import TextDataset
from edgekd.errors import UserError, first_line
from edgekd.manifest import artifact_folders, read_manifest
from edgekd.models import count_parameters, load_model
from edgekd.progress import progress_bar
from edgekd.targets import known_targets, load_target


@dataclass(frozen=True)
class BenchSettings:
    """How the bench measures; every field is recorded in report.json under `settings`."""

    max_length: int = 128  # tokens per example in the accuracy pass (longer rows are cut)
    sequence_lengths: tuple[int, ...] = (128,)  # latency input lengths; the first is the headline
    threads: int | None = None  # intra-op threads; None: each artifact's target profile
    repeats: int = 50  # timed interleaved rounds at batch 1
    warmup: int = 3  # untimed rounds first (allocations, lazy initialisation)
    throughput_batch_size: int = 32  # batch for the throughput pass; 0 = skip it
    measure_memory: bool = True  # peak resident memory, one child process per model
    roofline: bool = True  # operation counts and the machine's matmul peak

    def __post_init__(self):
        if self.max_length < 8:
            raise UserError(f"--max-length must be at least 8, got {self.max_length}")
        if not self.sequence_lengths or min(self.sequence_lengths) < 1:
            raise UserError("--sequence-length must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")
        if self.repeats < 1 or self.warmup < 0:
            raise UserError(f"--repeats must be at least 1 (got {self.repeats}) and the "
                            f"warm-up at least 0 (got {self.warmup})")
        if self.throughput_batch_size < 0:
            raise UserError(f"--throughput-batch must be 0 (off) or more, "
                            f"got {self.throughput_batch_size}")

    @property
    def throughput_repeats(self) -> int:
        return max(5, self.repeats // 5)  # each call is ~batch times longer than at batch 1


def bench(*, teacher: str | Path, student: Path | None, artifacts: Path | Sequence[Path] | None,
          data, max_length: int = 128, sequence_length: int = 128,
          threads: int | None = None, repeats: int = 50, show_progress: bool = True,
          teacher_model=None, sequence_lengths: Sequence[int] | None = None,
          warmup: int = 3, throughput_batch_size: int = 32, measure_memory: bool = True,
          measure_roofline: bool = True, gates: GateLimits = GateLimits(),
          cache_folder: Path | None = None) -> dict:
    """Measure every model on `data`; returns the report (docs/report-schema.md).

    `artifacts` is the --out folder of edgekd export (or one artifact folder), or a list of
    them: artifacts exported from the teacher itself are named teacher/<target>, the
    baseline a user would ship without distillation.
    `data` is a TextDataset (text classifiers) or an ImageDataset (image classifiers).
    `teacher_model` is an already loaded (model, tokenizer or image processor) pair of `teacher`. Gate results
    are recorded in the report; the caller decides whether a failure stops it
    (gates.raise_for_failed_gates).
    """
    settings = BenchSettings(
        max_length=max_length, sequence_lengths=tuple(sequence_lengths or (sequence_length,)),
        threads=threads, repeats=repeats, warmup=warmup,
        throughput_batch_size=throughput_batch_size, measure_memory=measure_memory,
        roofline=measure_roofline)
    if len(data) == 0:
        raise UserError("the evaluation data is empty; give at least one labelled example")
    feeds_kind = TextFeeds if isinstance(data, TextDataset) else PixelFeeds  # tokens or pixels
    task = feeds_kind.task
    model, preprocessor = (teacher_model if teacher_model is not None
                           else load_model(teacher, task=task, role="teacher"))
    _check_data_labels(data, model)
    feeds = feeds_kind.of(data, preprocessor, model, settings)
    candidates, skipped = _candidates(teacher, model, student=student, artifacts=artifacts,
                                      threads=settings.threads, task=task)
    for candidate in candidates:
        feeds.prepare(candidate, model)
    measurement = _measure(candidates, feeds=feeds, settings=settings,
                           show_progress=show_progress, cache_folder=cache_folder)
    rows = _rows(candidates, measurement=measurement, data=data)
    for row, candidate in zip(rows, candidates):
        row.update(feeds.row_record(candidate))
    report = {"schema_version": SCHEMA_VERSION, "task": task, "rows": rows,
              "machine": measurement["machine"],
              "data": {"rows": len(data), "labelled_rows": sum(l is not None for l in data.labels),
                       "labels": data.label_names},
              "settings": {**_settings_record(settings, candidates), **feeds.settings_record()},
              "peak": measurement["peaks"], "skipped": skipped}
    report["warnings"] = _warnings(report) + measurement["not_measured"]
    report["gates"] = check_gates(rows, gates)
    return report


# ---------------------------------------------------------------------------- what to measure

def _candidates(teacher, teacher_model, *, student: Path | None, artifacts,
                threads: int | None, task: str) -> tuple[list[Candidate], list[dict]]:
    """Teacher, student and artifacts to measure, and the artifacts skipped (with why)."""
    given = [] if artifacts is None else [artifacts] if isinstance(artifacts, (str, Path)) else list(artifacts)
    teacher_folder = Path(teacher) if Path(teacher).is_dir() else None
    loaded, skipped = [], []
    for folder in [folder for place in given for folder in artifact_folders(place)]:
        for make in (artifact_candidate, text_candidate):
            try:
                made = make(folder, threads=threads or _target_threads(folder), teacher_folder=teacher_folder)
            except Unavailable as reason:
                skipped.append({"artifact": str(folder), "reason": str(reason)})
                continue
            if made is not None:
                loaded.append(made)
    if given and not loaded:
        raise UserError(f"nothing in {', '.join(map(str, given))} can be benchmarked here: "
                        f"{skipped[0]['reason']}")
    names = [c.name for c in loaded]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise UserError(f"two artifacts would both be reported as {duplicate}; "
                        "bench artifacts of different targets or different models")
    # PyTorch runs at the artifacts' thread count, so the speedup compares like with like.
    torch_threads = threads or max([c.threads for c in loaded], default=1)
    candidates = [torch_candidate("teacher", teacher_model, teacher, threads=torch_threads)]
    if student is not None:
        student_model, _ = load_model(student, task=task, role="student")
        candidates.append(torch_candidate("student", student_model, student, threads=torch_threads))
    return candidates + loaded, skipped


def _target_threads(folder: Path) -> int:
    """The thread count of the artifact's target profile; 1 (a phone core) when unknown."""
    target = read_manifest(folder).get("target")
    return load_target(target).runtime.threads if target in known_targets() else 1


# ---------------------------------------------------------------------------- bad input

def _check_data_labels(data, teacher_model) -> None:
    teacher_labels = [str(teacher_model.config.id2label[i]) for i in sorted(teacher_model.config.id2label)]
    if list(data.label_names) != teacher_labels:
        unknown = sorted(set(data.label_names) - set(teacher_labels))
        raise UserError(f"the evaluation data's labels {unknown or data.label_names} are not "
                        f"the teacher's ({', '.join(teacher_labels)}); map the data onto the "
                        "teacher's labels (load_file(..., label2id=teacher label2id))")


# ---------------------------------------------------------------------------- measuring

def _measure(candidates: list[Candidate], *, feeds, settings: BenchSettings,
             show_progress: bool, cache_folder: Path | None) -> dict:
    headline = feeds.points[0]
    latency_feeds = {point: feeds.latency_feeds(candidates, point) for point in feeds.points}
    # The machine's load before any of our work starts: a busy machine shows up here.
    machine = machine_info()
    probes = _start_memory_probes(candidates, latency_feeds[headline]) if settings.measure_memory else {}
    logits, memory = meanwhile(probes, lambda: _all_logits(candidates, feeds=feeds, show_progress=show_progress))
    latency, batch_seconds = _time_all(candidates, feeds=feeds, latency_feeds=latency_feeds, settings=settings,
                                       show_progress=show_progress)
    operations, peaks, not_measured = {}, {}, []
    if settings.roofline:  # optional: a model whose operations cannot be counted loses its efficiency only
        operations = {c.name: _optional(lambda c=c: _operations(c, latency_feeds[headline][c.name]),
                                        f"operation count of {c.name}", not_measured) for c in candidates}
        peaks = {str(threads): _optional(lambda t=threads: roofline.matmul_peak(threads=t,
                                                                                cache_folder=_cache(cache_folder)),
                                         f"matrix-multiply peak at {threads} thread(s)", not_measured)
                 for threads in sorted({c.threads for c in candidates})}
    return {"logits": logits, "memory": memory, "latency": latency, "batch_seconds": batch_seconds,
            "operations": operations, "peaks": peaks, "not_measured": not_measured, "machine": machine,
            "throughput_batch_size": settings.throughput_batch_size, "headline": headline}


def _time_all(candidates, *, feeds, latency_feeds: dict,
              settings: BenchSettings, show_progress: bool) -> tuple[dict, dict | None]:
    """Seconds per call at batch 1 for each latency point, and at the throughput batch (or None)."""
    with _torch_threads(candidates):
        latency = {point: _interleaved(candidates, latency_feeds[point], repeats=settings.repeats,
                                       warmup=settings.warmup, label=f"latency, {feeds.point_name(point)}",
                                       show_progress=show_progress)
                   for point in feeds.points}
        if not settings.throughput_batch_size:
            return latency, None
        batch_feeds = feeds.batch_feeds(candidates, settings.throughput_batch_size)
        batch_seconds = _interleaved(candidates, batch_feeds, repeats=settings.throughput_repeats,
                                     warmup=1, label=f"throughput, batch {settings.throughput_batch_size}",
                                     show_progress=show_progress)
    return latency, batch_seconds


def _start_memory_probes(candidates: list[Candidate], feeds: dict) -> dict[str, MemoryProbe]:
    probes = {}
    for candidate in candidates:
        source = candidate.source
        if candidate.takes_text:
            continue  # the memory child registers no custom operators
        if candidate.format == "pytorch" and not Path(source).is_dir():
            continue  # a hub id: the child would need the hub; measured only from folders
        probes[candidate.name] = MemoryProbe(
            model_format=candidate.format, source=source, input_names=candidate.input_names,
            feeds=feeds[candidate.name], threads=candidate.threads)
    return probes


def _all_logits(candidates, *, feeds, show_progress: bool) -> dict:
    with progress_bar("evaluating", total=len(candidates) * len(feeds.data), enabled=show_progress) as advance:
        logits = {candidate.name: feeds.logits(candidate, progress=advance) for candidate in candidates}
    width = logits["teacher"].shape[-1]
    for name, values in logits.items():
        if values.shape[-1] != width:
            raise UserError(f"{name} outputs {values.shape[-1]} classes but the teacher {width}; "
                            "bench models trained on the same labels")
    return logits


class _torch_threads:
    """Set PyTorch's intra-op threads for the timed part; restore them afterwards."""

    def __init__(self, candidates: list[Candidate]):
        self.threads = max(c.threads for c in candidates if c.format == "pytorch")

    def __enter__(self):
        self.previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)

    def __exit__(self, *exc):
        torch.set_num_threads(self.previous)


def _interleaved(candidates, feeds: dict[str, dict], *, repeats: int, warmup: int, label: str,
                 show_progress: bool) -> dict[str, np.ndarray]:
    runners = {c.name: runner(c, feeds[c.name]) for c in candidates}
    with progress_bar(f"{label} (interleaved)", total=repeats, enabled=show_progress) as advance:
        return measure_interleaved(runners, repeats=repeats, warmup=warmup, progress=advance)


def _operations(candidate: Candidate, feeds: dict) -> dict | None:
    """Matrix-multiply operations of one inference, or None where the format hides its graph."""
    if candidate.takes_text:
        return None  # string operators: no matrix-multiply count
    chosen = {name: feeds[name] for name in candidate.input_names}
    if candidate.format == "pytorch":
        return roofline.torch_operations(candidate.model, chosen)
    if candidate.format == "onnx":
        return roofline.onnx_operations(candidate.source, chosen)
    return None  # .ort flatbuffers and .pte programs: no graph the onnx package can read


def _cache(cache_folder: Path | None) -> Path:
    from edgekd.config import cache_dir

    return cache_dir(cache_folder)


# ---------------------------------------------------------------------------- the rows

def _rows(candidates: list[Candidate], *, measurement: dict, data) -> list[dict]:
    labels = np.array([-1 if label is None else label for label in data.labels])
    has_student = any(c.name == "student" for c in candidates)
    rows = [_row(candidate, measurement=measurement, labels=labels, has_student=has_student)
            for candidate in candidates]
    accuracy = {row["name"]: row["quality"]["accuracy"] for row in rows}
    for row in rows:
        reference = row["reference"] or "teacher"
        row["accuracy_drop"] = 100 * (accuracy[reference] - row["quality"]["accuracy"])
        row["accuracy_drop_vs_teacher"] = 100 * (accuracy["teacher"] - row["quality"]["accuracy"])
    add_same_target_speedups(rows)
    return rows


def _row(candidate: Candidate, *, measurement: dict, labels: np.ndarray, has_student: bool) -> dict:
    name, logits, headline = candidate.name, measurement["logits"], measurement["headline"]
    row_quality = quality(logits[name], labels,
                          teacher_logits=None if name == "teacher" else logits["teacher"])
    if name == "teacher":
        row_quality.update(agreement=1.0, kl_to_teacher=0.0)
    seconds = measurement["latency"][headline][name]
    teacher_p50 = float(np.median(measurement["latency"][headline]["teacher"]))
    # What this row was made from: artifacts from their PyTorch model, the student from the teacher.
    made_from_student = candidate.format != "pytorch" and candidate.origin == "student" and has_student
    batch_seconds = measurement["batch_seconds"]
    return {
        "name": name, "runtime": candidate.runtime, "format": candidate.format,
        "precision": candidate.precision, "target": candidate.target,
        "source": str(candidate.source), "threads": candidate.threads, "quality": row_quality,
        "reference": None if name == "teacher" else "student" if made_from_student else "teacher",
        "params": _parameters(candidate), "size_bytes": _size(candidate),
        "memory": measurement["memory"].get(name), "latency": summarize(seconds),
        "latency_by_length": {str(length): summarize(by_name[name])
                              for length, by_name in measurement["latency"].items()},
        "throughput": (throughput(batch_seconds[name], batch_size=measurement["throughput_batch_size"])
                       if batch_seconds else None),
        "speedup": teacher_p50 / float(np.median(seconds)),
        "efficiency": _efficiency(measurement, candidate, float(np.median(seconds))),
    }


def _efficiency(measurement: dict, candidate: Candidate, seconds: float) -> dict | None:
    operations = measurement["operations"].get(candidate.name)
    peak = measurement["peaks"].get(str(candidate.threads))
    if operations is None or peak is None:
        return None
    return roofline.efficiency(operations, seconds=seconds, peak=peak)


def _optional(measure, what: str, not_measured: list[str]):
    """An optional measurement, or None with one line saying why: it never costs the report."""
    try:
        return measure()
    except Exception as error:  # noqa: BLE001 - any library failure; the rest of the bench stands
        not_measured.append(f"{what} not measured: {first_line(error)[:200]}")
        return None


def _parameters(candidate: Candidate) -> int | None:
    if candidate.format == "pytorch":
        return count_parameters(candidate.model)
    if candidate.format != "onnx":
        return None  # .ort/.pte: the runtime does not expose its weights to count them
    import onnx

    graph = onnx.load(str(candidate.source), load_external_data=False).graph
    return int(sum(np.prod(t.dims) for t in graph.initializer if len(t.dims) >= 1))


def _size(candidate: Candidate) -> int:
    """Bytes on disk: the model file, or the weight files of a PyTorch folder."""
    path = Path(candidate.source)
    if path.is_file():
        return path.stat().st_size
    weights = [p for p in path.glob("*") if p.suffix in (".safetensors", ".bin")] if path.is_dir() else []
    if weights:
        return sum(p.stat().st_size for p in weights)
    # A hub id: the bytes of the parameters in memory stand in for the download.
    return sum(p.numel() * p.element_size() for p in candidate.model.parameters())


def _settings_record(settings: BenchSettings, candidates: list[Candidate]) -> dict:
    return {"threads": settings.threads if settings.threads is not None
            else max(c.threads for c in candidates),
            "threads_from": "command line" if settings.threads is not None else "target profiles",
            "repeats": settings.repeats, "warmup": settings.warmup, "batch_size": 1,
            "throughput_batch_size": settings.throughput_batch_size,
            "throughput_repeats": settings.throughput_repeats if settings.throughput_batch_size else 0,
            "measure_memory": settings.measure_memory, "roofline": settings.roofline,
            "max_relative_iqr": MAX_RELATIVE_IQR, "interleaved": True}


def _warnings(report: dict) -> list[str]:
    warnings = []
    for row in report["rows"]:
        for length, summary in row["latency_by_length"].items():
            if noisy(summary):
                where = "batch 1" if length == "image" else f"{length} tokens"
                warnings.append(
                    f"{row['name']}: latency at {where} spreads too widely to trust "
                    f"(IQR {summary['iqr_ms']:.2f} ms = {100 * summary['relative_iqr']:.0f}% of "
                    f"the median); use more --repeats or a quieter machine")
    warnings += skipped_warnings(report["skipped"])
    if report["data"]["labelled_rows"] == 0:
        warnings.append("the evaluation data has no labels: accuracy and F1 are not measured, "
                        "agreement and KL to the teacher are")
    return warnings + measurement_warnings(report["rows"], report["machine"])
