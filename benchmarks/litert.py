"""LiteRT beside ONNX Runtime and ExecuTorch, on the text and image demo students.

    python benchmarks/litert.py [--work WORK] [--tasks text,image] [--repeats 100] [--test-rows 2000]

For each demo (the text demo's sliced, trimmed BBC News student; the image demo's ResNet
student on Fashion-MNIST), its teacher (cached) and its student (distilled into WORK once, as
the demo makes it) are exported to `litert`, `litert-int8`, `onnx-int8` and `executorch-int8`
(each held to its target's accuracy budget on the validation split), then benched in one
interleaved run on the test split (the first --test-rows rows): batch 1, 1 thread, medians;
text at 128 tokens, images at the student's own input size.

Goals (issue #30), per demo: `litert-int8` within the int8 accuracy budget of the student (1
point), at <= 0.3x the size of the `litert` fp32 file. Which runtime is fastest on this CPU
is reported with the ratios; there is no goal on it.

Writes benchmarks/results/litert.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "litert.json"
TARGETS = ("litert", "litert-int8", "onnx-int8", "executorch-int8")
TASKS = {"text": "text-classification", "image": "image-classification"}


def demo_of(name: str):
    if name == "text":
        from edgekd.tasks.text_demo import TextDemo

        return TextDemo(show_progress=False)
    from edgekd.vision.demo import ImageDemo

    return ImageDemo(show_progress=False)


def measure(name: str, *, work: Path, repeats: int, test_rows: int) -> dict:
    """One demo's student through the four targets and one interleaved bench."""
    from edgekd.benchmarking.classifier import bench
    from edgekd.exporting.inputs import sample_rows
    from edgekd.exporting.stage import export
    from edgekd.targets import load_targets_for

    demo = demo_of(name)
    data = demo.data()
    teacher = demo.teacher(data)
    folder = work / name
    student = folder / "student"
    if not (student / "config.json").is_file():
        demo.distill(teacher, data, student)
    task = TASKS[name]
    calibration = {}
    if task == "image-classification":  # static int8 targets calibrate on training pictures, as the demo does
        calibration["calibration"], _ = sample_rows(data["train"], 512, seed=0)
    artifacts = export(student, targets=load_targets_for(list(TARGETS), task), out=folder / "export", overwrite=True,
                       validation=data["validation"], task=task, **calibration)
    test = data["test"].subset(list(range(min(test_rows, len(data["test"])))))
    report = bench(teacher=teacher, student=student, artifacts=folder / "export", data=test, threads=1,
                   repeats=repeats, show_progress=False, throughput_batch_size=0, measure_memory=False,
                   measure_roofline=False)
    rows = {row["name"]: row for row in report["rows"]}
    fp32, int8 = rows["student/litert"], rows["student/litert-int8"]
    timed = {target: rows[f"student/{target}"]["latency"]["p50_ms"] for target in TARGETS}
    fastest = min(timed, key=timed.get)
    measured = {"litert_int8_accuracy_drop_points": int8["accuracy_drop"],
                "litert_int8_size_ratio": int8["size_bytes"] / fp32["size_bytes"],
                "p50_ms": timed, "fastest": fastest,
                "p50_over_fastest": {target: value / timed[fastest] for target, value in timed.items()},
                "litert_int8_over_onnx_int8": timed["litert-int8"] / timed["onnx-int8"],
                "litert_int8_over_executorch_int8": timed["litert-int8"] / timed["executorch-int8"]}
    met = {"litert_int8_within_budget": int8["accuracy_drop"] <= 1.0,
           "litert_int8_size_at_most_0.3x": measured["litert_int8_size_ratio"] <= 0.3}
    return {"measured": measured, "met": met, "test_rows": len(test), "report": report,
            "artifacts": {artifact.target: {"size_bytes": artifact.size_bytes,
                                            "parity_max_abs_diff": artifact.parity.max_abs_diff}
                          for artifact in artifacts}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "litert-bench",
                        help="where the demo students are distilled (reused when there)")
    parser.add_argument("--tasks", default="text,image")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--test-rows", type=int, default=2000)
    parser.add_argument("--note", default="")
    args = parser.parse_args()

    from edgekd.errors import atomic_write_text
    from edgekd.progress import silence_libraries

    silence_libraries()
    result = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    for name in args.tasks.split(","):
        started = time.perf_counter()
        result[name] = {**measure(name, work=args.work, repeats=args.repeats, test_rows=args.test_rows),
                        "wall_s": time.perf_counter() - started, "date": time.strftime("%Y-%m-%d"),
                        "note": args.note}
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(RESULT, json.dumps(result, indent=2, default=str) + "\n")
        print(name, json.dumps({k: result[name][k] for k in ("measured", "met")}, indent=1))


if __name__ == "__main__":
    main()
