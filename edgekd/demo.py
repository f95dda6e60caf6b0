"""The demo driver, one for every task: a task's embedded default run end to end, offline.

    data -> teacher (built once, cached) -> student, distilled -> the student and the teacher
    exported to the same targets (the teacher's: the baseline without distillation) -> bench
    -> report.json, report.md

A task says only what its demo uses, as a `DemoSpec`: text classification's in
edgekd/tasks/text_demo.py (MiniLM on BBC News), image classification's in edgekd/vision/demo.py
(a ResNet on Fashion-MNIST), causal LMs' in edgekd/lm/demo.py (SmolLM2-135M on BBC News text).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

from edgekd.errors import GateFailed
from edgekd.manifest import MANIFEST
from edgekd.progress import console


class DemoSpec(Protocol):
    """One task's demo; `distill` may keep what `record` reports."""

    targets: tuple[str, ...]  # what the student and the teacher are exported to
    export_note: str  # said after the targets, when they are exported (how int8 is calibrated)

    def data(self) -> dict:
        """The demo's splits (`train`, and what its export and bench read), said in one line."""

    def teacher(self, data: dict) -> Path:
        """The teacher's folder, built once and cached (its checksums verified before reuse)."""

    def distill(self, teacher: Path, data: dict, out: Path) -> Path:
        """The student, made from the teacher and distilled into `out`."""

    def export(self, model: Path, data: dict, out: Path) -> list:
        """`model` exported to every target under `out`; its artifacts."""

    def bench(self, teacher: Path, student: Path, artifacts: list[Path], data: dict) -> dict:
        """The bench report of teacher, student and artifacts on the held-out split."""

    def record(self, artifacts: list) -> dict:
        """What the report says of the demo's own recipe and of the student's `artifacts`
        (report.json `demo`)."""


def run(spec: DemoSpec, *, out: Path, log=console.print) -> dict:
    """The demo of `spec` into `out`; returns the bench report with the demo's record and the
    seconds of each part added (also written to OUT/report.json and report.md)."""
    from edgekd.benchmarking.report import print_table, write_report

    out, clock = Path(out), Clock()
    data = spec.data()
    teacher = spec.teacher(data)
    clock.lap("data_and_teacher_seconds")
    student = spec.distill(teacher, data, out / "student")
    clock.lap("distill_seconds")
    log(f"export: the student to {', '.join(spec.targets)}{spec.export_note}")
    artifacts = spec.export(student, data, out / "export")
    clock.lap("export_seconds")
    log("export: the teacher to the same targets (the baseline without distillation)")
    try:
        spec.export(teacher, data, out / "teacher-export")
    except GateFailed as failure:  # the other targets keep their baseline
        log(f"teacher baseline: {failure}; that target has no teacher counterpart")
    clock.lap("teacher_export_seconds")
    baseline = [folder for folder in sorted((out / "teacher-export").glob("*")) if (folder / MANIFEST).is_file()]
    report = spec.bench(teacher, student, [out / "export", *baseline], data)
    clock.lap("bench_seconds")
    report["demo"] = {"timings": clock.laps, "teacher_dir": str(teacher), **spec.record(artifacts)}
    write_report(report, out)
    print_table(report)
    log(f"report: {out / 'report.md'} and {out / 'report.json'}")
    return report


class Clock:
    """Seconds of each part of a run, for the report."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name], self._last = now - self._last, now
