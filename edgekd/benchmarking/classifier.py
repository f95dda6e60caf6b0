"""The classifier contract's bench measurement, for text and image classifiers alike (what
each model is fed: edgekd/benchmarking/feeds.py); edgekd/benchmarking/stage.py runs it.

    quality     accuracy, macro-F1, agreement with the teacher, mean KL to the teacher
                (with more than 5 classes: top-5 accuracy too)
    latency     p50/p90/p99 and IQR at batch 1 for each sequence length (images: at each
                model's own input size), and throughput at a larger batch; warm-up
                excluded, every model measured interleaved
    efficiency  matrix-multiply and convolution operations per inference against the machine's peak
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edgekd.benchmarking import roofline
from edgekd.benchmarking.feeds import PixelFeeds, TextFeeds
from edgekd.benchmarking.gates import GateLimits
from edgekd.benchmarking.latency import MAX_RELATIVE_IQR, measure_interleaved, noisy, summarize, throughput
from edgekd.benchmarking.runtimes import Candidate, Unavailable, artifact_candidate, runner, text_candidate, torch_candidate
from edgekd.benchmarking.stage import run
from edgekd.config import cache_dir
from edgekd.data import TextDataset
from edgekd.errors import UserError, first_line
from edgekd.manifest import artifact_folders, read_manifest
from edgekd.metrics import paired_interval, quality
from edgekd.models import load_model
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
    `teacher_model` is an already loaded (model, tokenizer or image processor) pair of `teacher`.
    """
    settings = BenchSettings(
        max_length=max_length, sequence_lengths=tuple(sequence_lengths or (sequence_length,)),
        threads=threads, repeats=repeats, warmup=warmup,
        throughput_batch_size=throughput_batch_size, measure_memory=measure_memory,
        roofline=measure_roofline)
    if len(data) == 0:
        raise UserError("the evaluation data is empty; give at least one labelled example")
    return run(ClassifierMeasurement(teacher, teacher_model, student=student, artifacts=artifacts, data=data,
                                     settings=settings, show_progress=show_progress, cache_folder=cache_folder),
               gates=gates)


class ClassifierMeasurement:
    """The classifier contract's measurement (edgekd/benchmarking/stage.py runs it): logits over
    the data for quality; forward passes at batch 1 (at each latency point) and at the
    throughput batch for speed; operations against the machine's peak for efficiency."""

    def __init__(self, teacher, teacher_model, *, student, artifacts, data, settings: BenchSettings,
                 show_progress: bool, cache_folder: Path | None):
        feeds_kind = TextFeeds if isinstance(data, TextDataset) else PixelFeeds  # tokens or pixels
        self.task = feeds_kind.task
        self.teacher, self.student, self.artifacts, self.data = teacher, student, artifacts, data
        self.model, preprocessor = (teacher_model if teacher_model is not None
                                    else load_model(teacher, task=self.task, role="teacher"))
        _check_data_labels(data, self.model)
        self.feeds = feeds_kind.of(data, preprocessor, self.model, settings)
        self.settings, self.show_progress, self.cache_folder = settings, show_progress, cache_folder
        self.latency_feeds: dict = {}
        self.not_measured: list[str] = []
        self.peaks: dict = {}
        self.correct: dict[str, np.ndarray] = {}  # per labelled row: 1 where a model is right

    def candidates(self) -> tuple[list[Candidate], list[dict]]:
        candidates, skipped = _candidates(self.teacher, self.model, student=self.student, artifacts=self.artifacts,
                                          threads=self.settings.threads, task=self.task)
        for candidate in candidates:
            self.feeds.prepare(candidate, self.model)
        self.latency_feeds = {point: self.feeds.latency_feeds(candidates, point) for point in self.feeds.points}
        return candidates, skipped

    def memory_feeds(self, candidates: list[Candidate]) -> dict[str, dict]:
        if not self.settings.measure_memory:
            return {}
        headline = self.latency_feeds[self.feeds.points[0]]
        return {c.name: headline[c.name] for c in candidates if not c.takes_text}  # the child has no string operators

    def quality(self, candidates: list[Candidate]) -> dict[str, dict]:
        logits = _all_logits(candidates, feeds=self.feeds, show_progress=self.show_progress)
        labels = np.array([-1 if label is None else label for label in self.data.labels])
        labelled = labels >= 0
        self.correct = {name: (values.argmax(-1) == labels)[labelled] for name, values in logits.items()}
        qualities = {}
        for candidate in candidates:
            name = candidate.name
            row_quality = quality(logits[name], labels, teacher_logits=None if name == "teacher" else logits["teacher"])
            if name == "teacher":
                row_quality.update(agreement=1.0, kl_to_teacher=0.0)
            qualities[name] = {"quality": row_quality, **self.feeds.row_record(candidate)}
        return qualities

    def speed(self, candidates: list[Candidate]) -> dict[str, dict]:
        settings, headline = self.settings, self.feeds.points[0]
        latency, batch_seconds = _time_all(candidates, feeds=self.feeds, latency_feeds=self.latency_feeds,
                                           settings=settings, show_progress=self.show_progress)
        operations = {}
        if settings.roofline:  # optional: a model whose operations cannot be counted loses its efficiency only
            operations = {c.name: _optional(lambda c=c: _operations(c, self.latency_feeds[headline][c.name]),
                                            f"operation count of {c.name}", self.not_measured) for c in candidates}
            self.peaks = {str(threads): _optional(
                lambda t=threads: roofline.matmul_peak(threads=t, cache_folder=cache_dir(self.cache_folder)),
                f"matrix-multiply peak at {threads} thread(s)", self.not_measured)
                for threads in sorted({c.threads for c in candidates})}
        speeds = {}
        for candidate in candidates:
            name = candidate.name
            seconds = float(np.median(latency[headline][name]))
            peak = self.peaks.get(str(candidate.threads))
            speeds[name] = {
                "latency": summarize(latency[headline][name]),
                "latency_by_length": {str(point): summarize(by_name[name]) for point, by_name in latency.items()},
                "throughput": (throughput(batch_seconds[name], batch_size=settings.throughput_batch_size)
                               if batch_seconds else None),
                "efficiency": (roofline.efficiency(operations[name], seconds=seconds, peak=peak)
                               if operations.get(name) is not None and peak is not None else None)}
        return speeds

    def compare(self, rows: list[dict]) -> None:
        accuracy = {row["name"]: row["quality"]["accuracy"] for row in rows}
        for row in rows:
            reference = row["reference"] or "teacher"
            row["accuracy_drop"] = 100 * (accuracy[reference] - row["quality"]["accuracy"])
            row["accuracy_drop_vs_teacher"] = 100 * (accuracy["teacher"] - row["quality"]["accuracy"])
            mine = self.correct.get(row["name"])
            for key, against in (("accuracy_drop_ci95", reference), ("accuracy_drop_vs_teacher_ci95", "teacher")):
                row[key] = None if mine is None or not len(mine) else paired_interval(self.correct[against], mine)

    def record(self, candidates: list[Candidate]) -> dict:
        data = self.data
        return {"data": {"rows": len(data), "labelled_rows": sum(label is not None for label in data.labels),
                         "labels": data.label_names},
                "settings": {**_settings_record(self.settings, candidates), **self.feeds.settings_record()},
                "peak": self.peaks}

    def warnings(self, report: dict) -> list[str]:
        warnings = []
        for row in report["rows"]:
            for length, summary in row["latency_by_length"].items():
                if noisy(summary):
                    where = "batch 1" if length == "image" else f"{length} tokens"
                    warnings.append(
                        f"{row['name']}: latency at {where} spreads too widely to trust "
                        f"(IQR {summary['iqr_ms']:.2f} ms = {100 * summary['relative_iqr']:.0f}% of "
                        f"the median); use more --repeats or a quieter machine")
        if report["data"]["labelled_rows"] == 0:
            warnings.append("the evaluation data has no labels: accuracy and F1 are not measured, "
                            "agreement and KL to the teacher are")
        return warnings + self.not_measured


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


def _optional(measure, what: str, not_measured: list[str]):
    """An optional measurement, or None with one line saying why: it never costs the report."""
    try:
        return measure()
    except Exception as error:  # noqa: BLE001 - any library failure; the rest of the bench stands
        not_measured.append(f"{what} not measured: {first_line(error)[:200]}")
        return None


def _settings_record(settings: BenchSettings, candidates: list[Candidate]) -> dict:
    return {"threads": settings.threads if settings.threads is not None
            else max(c.threads for c in candidates),
            "threads_from": "command line" if settings.threads is not None else "target profiles",
            "repeats": settings.repeats, "warmup": settings.warmup, "batch_size": 1,
            "throughput_batch_size": settings.throughput_batch_size,
            "throughput_repeats": settings.throughput_repeats if settings.throughput_batch_size else 0,
            "measure_memory": settings.measure_memory, "roofline": settings.roofline,
            "max_relative_iqr": MAX_RELATIVE_IQR, "interleaved": True}
