"""What the three stages return to Python callers: typed, with the paths they wrote."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Student:
    """A distilled student: its folder (save_pretrained, reloadable without edgekd) and how it learnt."""

    path: Path  # the student folder, with metrics.jsonl
    task: str  # text-classification, causal-lm or image-classification
    steps: int  # optimiser steps taken
    seconds: float  # training time
    summary: str  # the line the command line prints
    validation: dict = field(default_factory=dict)  # best epoch's validation metrics (classifiers)
    best_epoch: int | None = None  # the epoch kept (classifiers)
    final_loss: float | None = None  # last training loss (causal LMs)
    vocabulary: dict | None = None  # what --trim-vocab kept, when it ran
    poor: str | None = None  # why the student is no better than guessing, when it is not


@dataclass(frozen=True)
class Report:
    """A bench report: the data of report.json, and where its files are."""

    data: dict  # report.json as a dict (docs/report-schema.md)
    folder: Path  # where report.json, report.md (and report.png) were written

    @property
    def rows(self) -> list[dict]:
        return self.data["rows"]

    @property
    def passed(self) -> bool:
        """Whether every gate held (a failed gate makes `edgekd bench` exit with code 2)."""
        return all(gate.get("passed", True) for gate in self.data.get("gates", []))
