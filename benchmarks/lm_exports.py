"""Shared by the causal-LM export benchmarks (lm_pte.py, lm_gguf.py): the demo's student (and
teacher) exported to targets the way `edgekd export` does, quantised targets held to their
perplexity budget on the demo's BBC training articles, then one bench of them all on the
demo's held-out articles (interleaved decode rounds at 1 thread)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def arguments(description: str, *, rounds: int, result: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=result, help=f"Where the result goes (default {result}).")
    parser.add_argument("--student", type=Path, required=True, help="The causal-LM demo's student folder.")
    parser.add_argument("--rounds", type=int, default=rounds, help="Interleaved decode rounds.")
    parser.add_argument("--max-length", type=int, default=256, help="Positions of the exported cache.")
    return parser.parse_args()


def export_and_bench(student: Path, *, student_targets, teacher_targets=(), max_length: int, rounds: int):
    """(bench report, {origin/target: Artifact}, {origin/target: export seconds})."""
    from edgekd.benchmarking.report import print_table
    from edgekd.lm.bench import bench_lm
    from edgekd.lm.demo import LMDemoConfig, demo_texts
    from edgekd.lm.export import export_lm
    from edgekd.lm.models import demo_gguf_path, dequantised_gguf
    from edgekd.targets import load_target

    config = LMDemoConfig()
    train_texts, eval_texts = demo_texts(config)
    teacher = dequantised_gguf(demo_gguf_path())
    seconds, artifacts = {}, {}
    with tempfile.TemporaryDirectory(prefix="edgekd-lm-exports-") as scratch:
        folders = {"student": Path(scratch) / "export", "teacher": Path(scratch) / "teacher-export"}
        for origin, model, names in (("student", student, student_targets), ("teacher", teacher, teacher_targets)):
            for name in names:
                started = time.perf_counter()
                (artifact,) = export_lm(model, targets=[load_target(name)], out=folders[origin], max_length=max_length,
                                        gate_texts=train_texts, gate_source="BBC News training articles")
                seconds[f"{origin}/{name}"], artifacts[f"{origin}/{name}"] = time.perf_counter() - started, artifact
        report = bench_lm(teacher_dir=teacher, student_dir=student,
                          artifacts=[folder for folder in folders.values() if folder.is_dir()],
                          texts=eval_texts, max_length=config.distill.max_length, rounds=rounds)
        report["manifests"] = {key: (folders[key.split("/")[0]] / key.split("/")[1] / "edgekd.json").read_text()
                               for key in artifacts}
    print_table(report)
    return report, artifacts, seconds
