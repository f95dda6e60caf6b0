"""Baseline: what a user ships without distillation, against the distilled int8 student.

    python benchmarks/baseline.py                         # student from runs/demo (edgekd demo)
    python benchmarks/baseline.py --teacher DIR --student DIR [--student-artifact DIR] [--repeats 100]

Without distillation a user exports the teacher itself: the demo teacher (MiniLM-L6
fine-tuned on BBC News, from the cache) is exported to ONNX fp32 and dynamic int8 with
`edgekd export`'s own code, and measured in ONE interleaved run with the distilled
2-layer student's int8 export, the teacher and the student in PyTorch, on the demo's
500-article held-out test split (batch 1, 128 tokens, 1 thread, throughput at batch 16).

Noise: accuracy carries a 95% Wilson interval; the accuracy difference of the student
int8 against the teacher int8 carries an unpaired normal 95% interval (conservative: the
two are evaluated on the same articles); latencies carry their IQR, and speedups are
ratios of medians from the same interleaved rounds. Writes benchmarks/results/baseline.json.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "baseline.json"
Z95 = 1.959964


def wilson(successes: float, total: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    p = successes / total
    centre = (p + Z95 ** 2 / (2 * total)) / (1 + Z95 ** 2 / total)
    half = Z95 * math.sqrt(p * (1 - p) / total + Z95 ** 2 / (4 * total ** 2)) / (1 + Z95 ** 2 / total)
    return centre - half, centre + half


def difference_interval(p1: float, p2: float, total: int) -> tuple[float, float]:
    """95% normal interval of p1 - p2 treating the two as independent samples of `total`."""
    half = Z95 * math.sqrt(p1 * (1 - p1) / total + p2 * (1 - p2) / total)
    return p1 - p2 - half, p1 - p2 + half


def summary_row(row: dict, rows: dict, total: int) -> dict:
    accuracy = row["quality"]["accuracy"]
    memory, efficiency = row.get("memory") or {}, row.get("efficiency") or {}
    baseline_p50 = rows["teacher/onnx-int8"]["latency"]["p50_ms"]
    return {
        "name": row["name"], "runtime": row["runtime"], "accuracy": accuracy,
        "accuracy_ci95": wilson(accuracy * total, total), "macro_f1": row["quality"]["macro_f1"],
        "agreement": row["quality"]["agreement"], "params": row["params"],
        "size_mb": row["size_bytes"] / 1e6, "peak_rss_mb": memory.get("peak_rss_mb"),
        "model_rss_mb": memory.get("model_rss_mb"),
        **{key: row["latency"][key] for key in ("p50_ms", "p90_ms", "p99_ms", "iqr_ms")},
        "examples_per_s": (row.get("throughput") or {}).get("examples_per_s"),
        "speedup_vs_teacher_pytorch": row["speedup"],
        "speedup_vs_teacher_int8": baseline_p50 / row["latency"]["p50_ms"],
        "fraction_of_peak": efficiency.get("fraction_of_peak"),
    }


def comparison(rows: dict, total: int) -> dict:
    """The claim: distilled int8 student against the teacher's own int8 export."""
    student, teacher = rows["student/onnx-int8"], rows["teacher/onnx-int8"]
    student_accuracy, teacher_accuracy = student["quality"]["accuracy"], teacher["quality"]["accuracy"]
    low, high = difference_interval(student_accuracy, teacher_accuracy, total)
    return {
        "accuracy_difference_points": 100 * (student_accuracy - teacher_accuracy),
        "accuracy_difference_ci95_points": [100 * low, 100 * high],
        "speedup_p50": teacher["latency"]["p50_ms"] / student["latency"]["p50_ms"],
        "throughput_ratio": (student["throughput"]["examples_per_s"] / teacher["throughput"]["examples_per_s"]
                             if student.get("throughput") and teacher.get("throughput") else None),
        "size_ratio": teacher["size_bytes"] / student["size_bytes"],
        "peak_memory_ratio": ((teacher.get("memory") or {}).get("peak_rss_mb", math.nan)
                              / (student.get("memory") or {}).get("peak_rss_mb", math.nan)),
    }


def prepare(args) -> tuple[Path, Path, Path, dict]:
    """The cached teacher, the student, the student's int8 export, and the demo splits."""
    from edgekd.data import demo_splits
    from edgekd.tasks.text_demo import build_teacher, cache_dir
    from edgekd.errors import UserError

    splits = demo_splits(seed=0)
    if args.teacher is not None:
        teacher_dir = Path(args.teacher)
    else:  # the demo's own teacher, built once and cached
        teacher_dir = build_teacher(splits, cache=cache_dir(), show_progress=False)
    student = Path(args.student)
    if not (student / "config.json").is_file():
        raise UserError(f"no student at {student}; run `edgekd demo --out runs/demo` first "
                        "or pass --student")
    student_int8 = Path(args.student_artifact or student.parent / "export" / "onnx-int8")
    return teacher_dir, student, student_int8, splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=None,
                        help="teacher folder (default: the demo teacher from the cache, built if missing)")
    parser.add_argument("--student", default=str(ROOT / "runs" / "demo" / "student"))
    parser.add_argument("--student-artifact", default=None,
                        help="the student's onnx-int8 export (default: STUDENT/../export/onnx-int8; "
                             "exported here when missing)")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--note", default="", help="free text stored with the result")
    args = parser.parse_args()

    from edgekd.benchmarking.machine import busy
    from edgekd.benchmarking.report import print_table
    from edgekd.benchmarking.classifier import bench
    from edgekd.progress import silence_libraries
    from edgekd.exporting.stage import export
    from edgekd.targets import load_target

    silence_libraries()
    started = time.perf_counter()
    teacher_dir, student, student_int8, splits = prepare(args)
    scratch = Path(tempfile.mkdtemp(prefix="edgekd-baseline-"))
    print(f"exporting the teacher {teacher_dir.name} to onnx-fp32 and onnx-int8", flush=True)
    export(teacher_dir, targets=[load_target("onnx-fp32"), load_target("onnx-int8")],
           out=scratch / "teacher-export")
    if not (student_int8 / "edgekd.json").is_file():
        print(f"exporting the student {student} to onnx-int8", flush=True)
        export(student, targets=[load_target("onnx-int8")], out=scratch / "student-export")
        student_int8 = scratch / "student-export" / "onnx-int8"
    report = bench(teacher=teacher_dir, student=student, data=splits["test"],
                   artifacts=[scratch / "teacher-export", student_int8], max_length=128,
                   sequence_length=128, threads=1, repeats=args.repeats, throughput_batch_size=16)
    print_table(report)
    total = report["data"]["labelled_rows"]
    rows = {row["name"]: row for row in report["rows"]}
    result = {"benchmark": "baseline", "date": time.strftime("%Y-%m-%d"),
              "rows": [summary_row(row, rows, total) for row in report["rows"]],
              "student_int8_vs_teacher_int8": comparison(rows, total),
              "evaluation_articles": total, "settings": report["settings"], "peak": report["peak"],
              "machine": report["machine"], "warnings": report["warnings"],
              "shared_machine": busy(report["machine"]),
              "wall_s": time.perf_counter() - started, "note": args.note}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print_summary(result)


def print_summary(result: dict) -> None:
    print(f"\n{'model':<20}{'acc % (95% CI)':>22}{'MB':>8}{'p50 ms':>9}{'IQR':>7}"
          f"{'ex/s':>8}{'vs teacher':>12}{'vs teacher int8':>17}")
    for row in result["rows"]:
        low, high = row["accuracy_ci95"]
        print(f"{row['name']:<20}{100 * row['accuracy']:>8.1f} ({100 * low:.1f}-{100 * high:.1f}){'':>1}"
              f"{row['size_mb']:>8.1f}{row['p50_ms']:>9.2f}{row['iqr_ms']:>7.2f}"
              f"{row['examples_per_s'] or math.nan:>8.1f}{row['speedup_vs_teacher_pytorch']:>11.1f}x"
              f"{row['speedup_vs_teacher_int8']:>16.1f}x")
    claim = result["student_int8_vs_teacher_int8"]
    low, high = claim["accuracy_difference_ci95_points"]
    print(f"\nstudent int8 vs teacher int8: accuracy {claim['accuracy_difference_points']:+.1f} points "
          f"(95% CI {low:+.1f} to {high:+.1f}), {claim['speedup_p50']:.1f}x faster at p50, "
          f"{claim['size_ratio']:.1f}x smaller, {claim['peak_memory_ratio']:.1f}x less peak memory")
    print(json.dumps({"speedup_p50": claim["speedup_p50"],
                      "accuracy_difference_points": claim["accuracy_difference_points"],
                      "shared_machine": result["shared_machine"]}))


if __name__ == "__main__":
    main()
