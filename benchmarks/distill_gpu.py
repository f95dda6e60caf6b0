"""GPU check: the demo distillation on CUDA (bf16 autocast) against the same run on CPU.

    python benchmarks/distill_gpu.py      # run by benchmarks/gpu_check.sh on a GPU machine

Same teacher, student (teacher layers 0 and 5), recipe, seed and data on both devices;
the CUDA student's test accuracy must be within 1 point of the CPU student's. Writes
samples/s of both to benchmarks/results/distill_gpu.json; exits 1 when the check fails.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from edgekd.metrics import quality, torch_logits
from edgekd.data import demo_splits, encode
from edgekd.tasks.text_demo import STUDENT_RECIPE, build_teacher, cache_dir
from edgekd.training.train import distill
from edgekd.models import load_classifier, select_layers

RESULT = Path(__file__).resolve().parent / "results" / "distill_gpu.json"
TOLERANCE = 0.01  # one accuracy point


def run(device: str, splits, teacher_dir: Path, work: Path) -> dict:
    teacher, tokenizer = load_classifier(teacher_dir)
    student = select_layers(teacher, [0, 5])
    config = replace(STUDENT_RECIPE, device=device, checkpoint_every=0)
    result = distill(teacher=teacher, student=student, tokenizer=tokenizer, train=splits["train"],
                     validation=splits["validation"], config=config, out=work / f"student-{device}",
                     cache_dir=work / f"cache-{device}", show_progress=False)
    test = encode(splits["test"], tokenizer, max_length=config.max_length)
    logits = torch_logits(student, test, pad_token_id=tokenizer.pad_token_id)
    metrics = quality(logits, np.array(splits["test"].labels), teacher_logits=None)
    return {"test_accuracy": metrics["accuracy"], "test_macro_f1": metrics["macro_f1"],
            "samples_per_second": result.samples_per_second, "teacher_seconds": result.teacher_seconds,
            "seconds": result.seconds, "best_epoch": result.best_epoch}


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA GPU visible: this check needs one", file=sys.stderr)
        return 1
    splits = demo_splits(seed=0)
    started = time.perf_counter()
    teacher_dir = build_teacher(splits, cache=cache_dir(), show_progress=False)  # on the GPU when not cached
    teacher_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as work:
        cuda = run("cuda", splits, teacher_dir, Path(work))
        cpu = run("cpu", splits, teacher_dir, Path(work))
    difference = cuda["test_accuracy"] - cpu["test_accuracy"]
    met = abs(difference) <= TOLERANCE
    print(f"{'device':6s} {'test accuracy':>14s} {'samples/s':>10s}")
    for name, row in (("cuda", cuda), ("cpu", cpu)):
        print(f"{name:6s} {row['test_accuracy']:14.4f} {row['samples_per_second']:10.1f}")
    print(f"accuracy difference {difference:+.4f} (allowed ±{TOLERANCE}): {'ok' if met else 'FAILED'}")
    result = {"goal": f"CUDA bf16 test accuracy within {TOLERANCE} of CPU", "met": met,
              "difference": difference, "cuda": cuda, "cpu": cpu, "teacher_build_seconds": teacher_seconds,
              "recipe": asdict(STUDENT_RECIPE), "gpu": torch.cuda.get_device_name(0),
              "torch": torch.__version__, "machine": platform.platform()}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"met": met, "difference": round(difference, 4),
                      "cuda_samples_per_second": round(cuda["samples_per_second"], 1)}))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
