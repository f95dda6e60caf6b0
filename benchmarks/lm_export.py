"""Causal-LM exports of the demo student: int8 held to its perplexity budget, beside fp32,
int4, int8 with every MatMul quantised, and the teacher.

    EDGEKD_CACHE=/path/to/cache python benchmarks/lm_export.py --student runs/lm-demo/student

Exports fp32, int8 and int4 the way the demo does (gate text: the demo's BBC training
articles), adds `int8-all` (the same int8 graph with no MatMul kept float: what plain
dynamic quantisation gives), then benches the teacher, the student and every export on
the demo's held-out articles, which the int8 search never saw: perplexity, top-1
agreement with the teacher, decode tokens/s at 1 thread (interleaved rounds, medians),
size.

Goals (benchmarks/results/lm_export.json):
- int8 held-out perplexity within 1.1x the fp32 export's (the target's budget, here
  measured on text the search did not use);
- int8 decodes at least 4x the teacher's tokens/s (PyTorch fp32, 1 thread).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "lm_export.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, required=True, help="The demo's student folder.")
    parser.add_argument("--out", type=Path, default=None, help="Working folder (default: a temporary one).")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved decode rounds.")
    parser.add_argument("--note", default="", help="Free text saved with the result.")
    args = parser.parse_args()

    import onnx

    from edgekd.benchmarking.machine import machine_info  # CPU model and flags, recorded with every figure
    from edgekd.benchmarking.report import print_table
    from edgekd.lm.bench import bench_lm
    from edgekd.lm.demo import LMDemoConfig, demo_texts
    from edgekd.lm.export import export_lm
    from edgekd.lm.models import demo_gguf_path, dequantised_gguf
    from edgekd.lm.quantize import Int8Builder, save_onnx
    from edgekd.targets import load_target

    config = LMDemoConfig()
    train_texts, eval_texts = demo_texts(config)
    work = args.out or Path(tempfile.mkdtemp(prefix="edgekd-lm-export-"))
    export = work / "export"
    started = time.perf_counter()
    artifacts = export_lm(args.student, targets=[load_target(name) for name in ("onnx-fp32", "onnx-int8", "onnx-int4")],
                          out=export, overwrite=True,
                          max_length=max(256, config.distill.max_length), gate_texts=train_texts,
                          gate_source="BBC News training articles")
    export_seconds = time.perf_counter() - started
    # every MatMul quantised: the int8 folder with the unsearched graph
    shutil.copytree(export / "onnx-int8", export / "int8-all")
    fp32_graph = onnx.load(str(export / "onnx-fp32" / "model.onnx"))
    save_onnx(Int8Builder(fp32_graph).build(), export / "int8-all" / "model.onnx")
    manifest_path = export / "int8-all" / "edgekd.json"  # its own row: student/int8-all
    manifest_path.write_text(json.dumps({**json.loads(manifest_path.read_text()), "target": "int8-all"}))
    del fp32_graph
    report = bench_lm(teacher_dir=dequantised_gguf(demo_gguf_path()), student_dir=args.student,
                      artifacts=export, texts=eval_texts, max_length=config.distill.max_length,
                      rounds=args.rounds)
    print_table(report)
    rows = {row["name"]: row for row in report["rows"]}
    int8, fp32 = rows["student/onnx-int8"], rows["student/onnx-fp32"]
    manifest = json.loads((export / "onnx-int8" / "edgekd.json").read_text())
    goals = {
        "int8_perplexity_within_1.1x_fp32": {
            "value": int8["quality"]["perplexity"] / fp32["quality"]["perplexity"],
            "met": int8["quality"]["perplexity"] <= 1.1 * fp32["quality"]["perplexity"]},
        "int8_decode_at_least_4x_teacher": {"value": int8["speedup"], "met": int8["speedup"] >= 4}}
    result = {"goals": goals, "rows": report["rows"], "held_out_texts": report["data"]["rows"],
              "int8_search": {k: v for k, v in manifest["int8_search"].items() if k != "kept_float"},
              "int8_kept_float": manifest["int8_search"]["kept_float"],
              "perplexity_gate": {a.target: a.perplexity_ratio for a in artifacts if a.perplexity_ratio},
              "export_seconds": export_seconds, "rounds": args.rounds, "machine": platform.platform(),
              "cpu": machine_info(), "note": args.note}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({name: goal["met"] for name, goal in goals.items()}))


if __name__ == "__main__":
    main()
