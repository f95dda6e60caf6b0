"""The report: a terminal table for people, report.json for scripts, report.md for reviews."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgekd.errors import atomic_write_text

SCHEMA_VERSION = 1
COLUMNS = [  # (header, key, format)
    ("model", "name", "{}"),
    ("runtime", "runtime", "{}"),
    ("acc %", "accuracy", "{:.2f}"),
    ("agree %", "agreement", "{:.2f}"),
    ("params M", "params_m", "{:.2f}"),
    ("MB", "size_mb", "{:.1f}"),
    ("p50 ms", "p50_ms", "{:.2f}"),
    ("speedup", "speedup", "{:.1f}x"),
]


def table_rows(report: dict) -> list[list[str]]:
    rows = []
    for row in report["rows"]:
        flat = {"name": row["name"], "runtime": row["runtime"],
                "accuracy": 100 * row["quality"]["accuracy"],
                "agreement": 100 * row["quality"].get("agreement", float("nan")),
                "params_m": row["params"] / 1e6, "size_mb": row["size_bytes"] / 1e6,
                "p50_ms": row["latency"]["p50_ms"], "speedup": row["speedup"]}
        rows.append([_format(fmt, flat[key]) for _, key, fmt in COLUMNS])
    return rows


def _format(fmt: str, value) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return fmt.format(value)


def print_table(report: dict, console: Console | None = None) -> None:
    table = Table(caption="acc: accuracy on the labels; agree: same prediction as the teacher; "
                          "speedup: teacher p50 / model p50", title=f"edgekd bench — {report['data']['rows']} examples, "
                        f"latency at batch 1, {report['settings']['sequence_length']} tokens, "
                        f"{report['settings']['threads']} thread(s)")
    for header, _, _ in COLUMNS:
        table.add_column(header, justify="left" if header in ("model", "runtime") else "right")
    for row in table_rows(report):
        table.add_row(*row)
    if console is None:
        console = Console()
        console.width = max(console.width, 110)  # pipes default to 80 columns; keep rows on one line
    console.print(table)


def markdown(report: dict) -> str:
    headers = [header for header, _, _ in COLUMNS]
    lines = ["# edgekd bench report", "",
             f"{report['data']['rows']} evaluation examples; latency p50 at batch 1, "
             f"{report['settings']['sequence_length']} tokens, {report['settings']['threads']} "
             f"thread(s), {report['settings']['repeats']} interleaved repeats. "
             f"Speedup is relative to the teacher in PyTorch fp32.", "",
             "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    machine = report["machine"]
    lines += ["", f"Machine: {machine['cpu']}, {machine['cores']} cores; torch "
              f"{machine['torch']}, onnxruntime {machine['onnxruntime']}.", ""]
    return "\n".join(lines)


def write_report(report: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(folder / "report.md", markdown(report))
