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


def classifier_table(result: dict) -> str:
    lines = ["| model | runtime | test accuracy | agreement with teacher | size | p50 latency | speedup over teacher (PyTorch) | speedup over teacher, same target |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["headline"]["table"]:
        lines.append(f"| {row['name']} | {row['runtime']} | {100 * row['accuracy']:.1f}% | "
                     f"{100 * row['agreement']:.1f}% | {row['size_bytes'] / 1e6:.1f} MB | {row['p50_ms']:.1f} ms | "
                     f"{row['speedup']:.2f}× | {_times(row.get('speedup_same_target'))} |")
    return "\n".join(lines) + f"\n\nMeasured on: {cpu_line(result['machine'])}."


def causal_lm_table(result: dict) -> str:
    lines = ["| model | runtime | held-out perplexity | size | peak memory | decode ms/token | speedup over teacher (PyTorch) | speedup over teacher, same target |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["report"]["rows"]:
        memory = (row.get("memory") or {}).get("peak_rss_mb")
        lines.append(f"| {row['name']} | {row['runtime']} | {row['quality']['perplexity']:.1f} | "
                     f"{row['size_bytes'] / 1e6:.0f} MB | {'–' if memory is None else f'{memory:.0f} MB'} | "
                     f"{row['latency']['p50_ms']:.1f} ms | {row['speedup']:.2f}× | "
                     f"{_times(row.get('speedup_same_target'))} |")
    return "\n".join(lines) + f"\n\nMeasured on: {cpu_line(result['report']['machine'])}."


def shrink_table(result: dict) -> str:
    lines = ["| student | starts from | parameters | test accuracy (PyTorch) | int8 test accuracy | int8 size | int8 p50 | speedup over teacher (PyTorch) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in result["students"].items():
        starts = {"slice": "sliced from the teacher", "random": "random weights",
                  "layer cut": "teacher layers 0 and 5, full width"}[row["init"]]
        lines.append(f"| {name.split(' ')[0]} (layers x hidden) | {starts} | "
                     f"{row['params'] / 1e6:.1f}M | {100 * row['test_accuracy']:.1f}% | {100 * row['int8_accuracy']:.1f}% | "
                     f"{row['int8_size_bytes'] / 1e6:.1f} MB | {row['int8_p50_ms']:.2f} ms | "
                     f"{row['int8_speedup_over_teacher_pytorch']:.1f}× |")
    return "\n".join(lines) + f"\n\nMeasured on: {cpu_line(result['machine'])}."


def main() -> None:
    for name, table in (("demo.json", classifier_table), ("lm_demo.json", causal_lm_table),
                        ("shrink.json", shrink_table)):
        path = RESULTS / name
        if path.is_file():
            print(f"<!-- from benchmarks/results/{name} -->\n{table(json.loads(path.read_text()))}\n")


if __name__ == "__main__":
    main()
