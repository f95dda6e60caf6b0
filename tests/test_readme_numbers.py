"""Every number in README's tables comes from a committed benchmark result: rounded the way
the table shows it (percentages of fractions, MB of bytes, minutes of seconds), it occurs in
a JSON file under benchmarks/results/ (history/ holds earlier machines' results and does not
count)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"^(-?\d[\d,]*(?:\.\d+)?)\s*(%|×|x|MB|ms|min|s)?$")
# how a JSON value becomes what a table shows
SHOWN_AS = (lambda v: v, lambda v: 100 * v, lambda v: v / 1e6, lambda v: v / 60)


def table_numbers(markdown: str) -> list[tuple[str, str]]:
    """(row label, number as written) for every numeric cell of every table body."""
    found = []
    for line in markdown.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [cell.strip().strip("*") for cell in line.strip().strip("|").split("|")]
        numbers = [(cells[0], match.group(1)) for cell in cells[1:] if (match := NUMBER.match(cell))]
        found.extend(numbers)
    return found


def result_values() -> list[float]:
    values = []

    def walk(item):
        if isinstance(item, bool):
            return
        if isinstance(item, (int, float)) and math.isfinite(item):
            values.append(float(item))
        elif isinstance(item, dict):
            for value in item.values():
                walk(value)
        elif isinstance(item, list):
            for value in item:
                walk(value)

    for path in (ROOT / "benchmarks" / "results").glob("*.json"):
        walk(json.loads(path.read_text()))
    return values


def occurs(written: str, values: list[float]) -> bool:
    number = float(written.replace(",", ""))
    decimals = len(written.partition(".")[2])
    return any(f"{shown(value):.{decimals}f}" == f"{number:.{decimals}f}" for value in values for shown in SHOWN_AS)


def test_the_checker_finds_a_number_rounded_wrong():
    values = [4.349988, 0.966, 90872572.0]
    assert occurs("4.3", values) and occurs("96.6", values) and occurs("90.9", values)
    assert not occurs("4.4", values)  # 4.35 is shown as 4.3 by its own format, never 4.4
    assert table_numbers("| model | x |\n|---|---|\n| student | 4.4× |\n| name | onnx-int8 |") == [("student", "4.4")]


def test_every_number_in_readme_tables_occurs_in_a_committed_result():
    numbers = table_numbers((ROOT / "README.md").read_text())
    assert len(numbers) >= 20  # the headline tables are there
    values = result_values()
    missing = [f"{label}: {written}" for label, written in numbers if not occurs(written, values)]
    assert not missing, f"README numbers found in no benchmarks/results/*.json: {missing}"
