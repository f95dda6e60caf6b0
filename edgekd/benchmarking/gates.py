"""Gates: limits a shipped model must meet, so a CI job can stop a bad one (exit code 2).

Gated rows are the shipped ones: every exported artifact, or the PyTorch student when no
artifacts were given. Each limit comes from the command line when given there, else from
the budgets of the artifact's target profile (targets/<name>.yaml), else it is not checked.

    accuracy_drop     classifiers: accuracy points lost against the model a row was made from:
                      an artifact against the PyTorch student (the teacher when no student was
                      given), the student against the teacher
    perplexity_ratio  causal LMs: perplexity over that of the model a row was made from (same
                      references)
    latency_ms        classifiers: p50 at batch 1 at the first sequence length; causal LMs:
                      decode time per generated token (median of the interleaved rounds)
    size_mb           model file size on disk (weights files for a PyTorch folder), 1 MB = 10^6 bytes

A gate applies to the rows that have its measurement: every gate serves every task it can.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgekd.errors import GateFailed, UserError

GATES = ("accuracy_drop", "perplexity_ratio", "latency_ms", "size_mb")
FLAGS = {"accuracy_drop": "--max-accuracy-drop", "perplexity_ratio": "--max-perplexity-ratio",
         "latency_ms": "--max-latency-ms", "size_mb": "--max-size-mb"}
BUDGET_FIELDS = {"accuracy_drop": "max_accuracy_drop", "perplexity_ratio": "max_perplexity_ratio",
                 "latency_ms": "max_latency_ms", "size_mb": "max_size_mb"}
UNITS = {"accuracy_drop": " points", "perplexity_ratio": "x", "latency_ms": " ms", "size_mb": " MB"}


@dataclass(frozen=True)
class GateLimits:
    """Limits from the command line; None: use the target profile's budget, if any."""

    max_accuracy_drop: float | None = None  # accuracy points (0-100 scale)
    max_perplexity_ratio: float | None = None  # perplexity over the reference's
    max_latency_ms: float | None = None  # p50 at batch 1 (causal LMs: per decoded token), milliseconds
    max_size_mb: float | None = None  # model file size, MB (10^6 bytes)

    def __post_init__(self):
        for gate, value in self.by_gate().items():
            if value is not None and (math.isnan(value) or value < 0):
                raise UserError(f"{FLAGS[gate]} must be a number >= 0, got {value}")
        if self.max_perplexity_ratio is not None and self.max_perplexity_ratio < 1:
            raise UserError(f"--max-perplexity-ratio must be at least 1 (the reference itself is at 1), "
                            f"got {self.max_perplexity_ratio}")

    def by_gate(self) -> dict[str, float | None]:
        return {"accuracy_drop": self.max_accuracy_drop, "perplexity_ratio": self.max_perplexity_ratio,
                "latency_ms": self.max_latency_ms, "size_mb": self.max_size_mb}


def gated_rows(rows: list[dict]) -> list[dict]:
    """What would be shipped: the student's artifacts; the teacher's when only those were given
    (beside the student's they are the baseline, not gated); else the student itself."""
    exported = [row for row in rows if row["format"] != "pytorch"]
    students = [row for row in exported if not row["name"].startswith("teacher/")]
    return students or exported or [row for row in rows if row["name"] == "student"]


def measured(row: dict, gate: str) -> float | None:
    """The row's value for `gate`; None when the row's task has no such measurement."""
    if gate in ("accuracy_drop", "perplexity_ratio"):
        return row.get(gate)
    if gate == "latency_ms":
        return row["latency"]["p50_ms"]
    return row["size_bytes"] / 1e6


def check_gates(rows: list[dict], limits: GateLimits) -> list[dict]:
    """One result per gate that has a limit, for every gated row."""
    results = []
    for row in gated_rows(rows):
        budgets = _target_budgets(row.get("target"))
        for gate in GATES:
            value = measured(row, gate)
            if value is None:
                continue
            limit, source = limits.by_gate()[gate], "command line"
            if limit is None:
                limit, source = budgets.get(gate), f"target {row.get('target')}"
            if limit is None:
                continue
            results.append({"gate": gate, "artifact": row["name"], "value": value,
                            "limit": float(limit), "source": source,
                            # a NaN (no labelled rows) cannot pass an accuracy gate
                            "passed": bool(value <= limit)})
    return results


def _target_budgets(target_name: str | None) -> dict[str, float | None]:
    if not target_name:
        return {}
    from edgekd.targets import known_targets, load_target

    if target_name not in known_targets():
        return {}  # exported with a target file this checkout does not have
    budgets = load_target(target_name).budgets
    return {gate: getattr(budgets, field) for gate, field in BUDGET_FIELDS.items()}


def raise_for_failed_gates(results: list[dict]) -> None:
    """GateFailed (exit 2) naming every failed gate, its artifact and both numbers."""
    failed = [result for result in results if not result["passed"]]
    if failed:
        raise GateFailed("; ".join(_describe(result) for result in failed))


def _describe(result: dict) -> str:
    unit = UNITS[result["gate"]]
    flag = FLAGS[result["gate"]]
    return (f"gate {flag} failed for {result['artifact']}: {result['value']:.2f}{unit} > "
            f"limit {result['limit']:.2f}{unit} (from {result['source']})")
