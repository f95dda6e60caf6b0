"""README's tables, printed from the committed results (demo.json, lm_demo.json, shrink.json).

    python benchmarks/readme_tables.py

Each table is followed by the CPU it was measured on (model, cores and flags, from the result).
tests/test_readme_numbers.py checks that every number in README's tables occurs in a result.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def cpu_line(machine: dict) -> str:
    return (f"{machine['cpu']}, {machine['usable_cores']} cores, flags {' '.join(machine['flags'])}; "
            f"onnxruntime {machine['onnxruntime']}, torch {machine['torch']}")


def markdown(headers: list[str], rows: list[list[str]], machine: dict) -> str:
    """A table with its separator row, then the CPU it was measured on."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + f"\n\nMeasured on: {cpu_line(machine)}."


SPEEDUPS = ["speedup over teacher (PyTorch)", "speedup over teacher, same target"]


def classifier_table(result: dict) -> str:
    headers = ["model", "runtime", "test accuracy", "agreement with teacher", "size", "p50 latency", *SPEEDUPS]
    rows = [[row["name"], row["runtime"], f"{100 * row['accuracy']:.1f}%", f"{100 * row['agreement']:.1f}%",
             f"{row['size_bytes'] / 1e6:.1f} MB", f"{row['p50_ms']:.1f} ms", f"{row['speedup']:.2f}×",
             _times(row.get("speedup_same_target"))] for row in result["headline"]["table"]]
    return markdown(headers, rows, result["machine"])


def causal_lm_table(result: dict) -> str:
    headers = ["model", "runtime", "held-out perplexity", "size", "peak memory", "decode ms/token", *SPEEDUPS]
    rows = []
    for row in result["report"]["rows"]:
        memory = (row.get("memory") or {}).get("peak_rss_mb")
        rows.append([row["name"], row["runtime"], f"{row['quality']['perplexity']:.1f}",
                     f"{row['size_bytes'] / 1e6:.0f} MB", "–" if memory is None else f"{memory:.0f} MB",
                     f"{row['latency']['p50_ms']:.1f} ms", f"{row['speedup']:.2f}×",
                     _times(row.get("speedup_same_target"))])
    return markdown(headers, rows, result["report"]["machine"])


STARTS = {"slice": "sliced from the teacher", "random": "random weights",
          "layer cut": "teacher layers 0 and 5, full width"}


def shrink_table(result: dict) -> str:
    headers = ["student", "starts from", "parameters", "test accuracy (PyTorch)", "int8 test accuracy", "int8 size",
               "int8 p50", SPEEDUPS[0]]
    rows = [[f"{name.split(' ')[0]} (layers x hidden)", STARTS[row["init"]], f"{row['params'] / 1e6:.1f}M",
             f"{100 * row['test_accuracy']:.1f}%", f"{100 * row['int8_accuracy']:.1f}%",
             f"{row['int8_size_bytes'] / 1e6:.1f} MB", f"{row['int8_p50_ms']:.2f} ms",
             f"{row['int8_speedup_over_teacher_pytorch']:.1f}×"] for name, row in result["students"].items()]
    return markdown(headers, rows, result["machine"])


def main() -> None:
    for name, table in (("demo.json", classifier_table), ("lm_demo.json", causal_lm_table),
                        ("shrink.json", shrink_table)):
        path = RESULTS / name
        if path.is_file():
            print(f"<!-- from benchmarks/results/{name} -->\n{table(json.loads(path.read_text()))}\n")


if __name__ == "__main__":
    main()
