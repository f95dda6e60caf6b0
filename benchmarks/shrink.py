"""Sliced against randomly initialised students of the same shape, on the demo.

    EDGEKD_CACHE=/path/to/cache python benchmarks/shrink.py [--shapes 2x256,2x192] [--epochs 2]

The demo teacher (MiniLM-L6 fine-tuned on BBC News, from the cache) and its training split;
for each shape (layers x hidden; heads keep the teacher's size of 32, FFN 4 x hidden) one
student sliced from the teacher (`--student-init slice`, the default) and one from random
weights (`--student-init random`, at edgekd's random-init learning rate), both distilled with
the demo's recipe for the same epochs and seed; the demo's layer cut (2 x 384) as the
baseline row. Test accuracy on the 500 held-out articles with a paired bootstrap 95% interval
of each sliced-minus-random difference; every student's onnx-int8 export timed in one
interleaved bench run against the teacher (batch 1, 128 tokens, 1 thread).
Written to benchmarks/results/shrink.json.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "shrink.json"
RECIPES = {"slice": 3e-4, "random": 1e-3, "layer cut": 1e-4}  # peak learning rate of each way to start


def paired_interval(first: np.ndarray, second: np.ndarray, *, samples: int = 4000, seed: int = 0) -> list[float]:
    """95% bootstrap interval of mean(first) - mean(second) over the same rows, in points."""
    generator = random.Random(seed)
    count, differences = len(first), []
    for _ in range(samples):
        picks = [generator.randrange(count) for _ in range(count)]
        differences.append(100 * (first[picks].mean() - second[picks].mean()))
    differences.sort()
    return [differences[int(0.025 * samples)], differences[int(0.975 * samples)]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="2x256,2x192", help="layers x hidden, comma separated")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--work", type=Path, default=None,
                        help="working folder; students already distilled there (same shapes) are reused")
    parser.add_argument("--note", default="")
    args = parser.parse_args()

    from edgekd.bench.stage import bench
    from edgekd.cli.app import quiet_libraries
    from edgekd.config import cache_dir
    from edgekd.data import demo_splits, encode, sample_batches
    from edgekd.demo import STUDENT_LAYERS, STUDENT_RECIPE, TEACHER_RECIPE, build_teacher
    from edgekd.distill.train import distill
    from edgekd.export.stage import export
    from edgekd.metrics import torch_logits
    from edgekd.models import count_parameters, layer_count, load_classifier, parse_layers, select_layers
    from edgekd.slicing import configured_student
    from edgekd.targets import load_target

    quiet_libraries()
    started = time.perf_counter()
    splits = demo_splits(seed=0)
    teacher_dir = build_teacher(splits, cache=cache_dir(None), recipe=TEACHER_RECIPE)
    teacher, tokenizer = load_classifier(teacher_dir, role="teacher")
    probe = sample_batches(splits["train"], tokenizer, max_length=STUDENT_RECIPE.max_length, seed=STUDENT_RECIPE.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="edgekd-shrink-"))
    test = splits["test"]
    labels = np.array(test.labels)
    students = {"2x384 layer cut": ("layer cut", None)}
    for shape in args.shapes.split(","):
        layers, hidden = (int(part) for part in shape.split("x"))
        head_size = teacher.config.hidden_size // teacher.config.num_attention_heads  # kept by a slice
        spec = f"hidden={hidden},heads={hidden // head_size},layers={layers},intermediate={4 * hidden}"
        students[f"{shape} sliced"] = ("slice", spec)
        students[f"{shape} random"] = ("random", spec)
    rows, correct = {}, {}
    for name, (init, spec) in students.items():
        print(f"student {name}", flush=True)
        if spec is None:
            student = select_layers(teacher, parse_layers(STUDENT_LAYERS, layer_count(teacher)))
        else:
            student = configured_student(teacher, spec, init=init, probe=probe, seed=STUDENT_RECIPE.seed)
        config = replace(STUDENT_RECIPE, epochs=args.epochs, lr=RECIPES[init])
        folder = work / name.replace(" ", "-")
        if (folder / "student" / "model.safetensors").is_file() and (folder / "validation.json").is_file():
            validation = json.loads((folder / "validation.json").read_text())  # distilled by an earlier run
        else:
            result = distill(teacher=teacher, student=student, tokenizer=tokenizer, train=splits["train"],
                             validation=splits["validation"], config=config, out=folder / "student", overwrite=True)
            validation = result.validation
            (folder / "validation.json").write_text(json.dumps(validation))
        trained, _ = load_classifier(folder / "student", role="student")
        logits = torch_logits(trained, encode(test, tokenizer, max_length=config.max_length),
                              pad_token_id=tokenizer.pad_token_id)
        correct[name] = (logits.argmax(-1) == labels).astype(float)
        export(folder / "student", targets=[load_target("onnx-int8")], out=folder / "export", overwrite=True)
        rows[name] = {"init": init, "spec": spec, "params": count_parameters(trained), "lr": config.lr,
                      "epochs": config.epochs, "test_accuracy": float(correct[name].mean()),
                      "validation": validation, "export": str(folder / "export" / "onnx-int8")}
    # one bench run per student (a report names each row by its target): each int8 export timed
    # interleaved with the teacher in PyTorch, so each speedup is a ratio from one run
    for name, row in rows.items():
        report = bench(teacher=teacher_dir, student=None, artifacts=[Path(row["export"])], data=test, max_length=128,
                       sequence_length=128, threads=1, repeats=args.repeats, throughput_batch_size=0,
                       teacher_model=(teacher, tokenizer), measure_memory=False, measure_roofline=False)
        measured, teacher_row = report["rows"][1], report["rows"][0]
        row.update(int8_accuracy=measured["quality"]["accuracy"], int8_p50_ms=measured["latency"]["p50_ms"],
                   int8_speedup_over_teacher_pytorch=measured["speedup"], int8_size_bytes=measured["size_bytes"],
                   teacher_p50_ms=teacher_row["latency"]["p50_ms"], warnings=report["warnings"])
    differences = {}
    for shape in args.shapes.split(","):
        sliced, random_init = correct[f"{shape} sliced"], correct[f"{shape} random"]
        differences[shape] = {"sliced_minus_random_points": float(100 * (sliced.mean() - random_init.mean())),
                              "ci95_points": paired_interval(sliced, random_init),
                              "sliced_beats_random_beyond_noise": bool(paired_interval(sliced, random_init)[0] > 0)}
    result = {"benchmark": "shrink", "date": time.strftime("%Y-%m-%d"), "students": rows,
              "sliced_vs_random": differences, "teacher_accuracy": teacher_row["quality"]["accuracy"],
              "teacher_size_bytes": teacher_row["size_bytes"], "teacher_p50_ms": teacher_row["latency"]["p50_ms"],
              "recipe": asdict(STUDENT_RECIPE), "learning_rates": RECIPES, "machine": report["machine"],
              "warnings": report["warnings"], "wall_s": time.perf_counter() - started, "note": args.note}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\n{'student':<20}{'params M':>10}{'test acc %':>12}{'int8 acc %':>12}{'int8 p50 ms':>13}{'x teacher':>11}")
    for name, row in rows.items():
        print(f"{name:<20}{row['params'] / 1e6:>10.2f}{100 * row['test_accuracy']:>12.1f}"
              f"{100 * row['int8_accuracy']:>12.1f}{row['int8_p50_ms']:>13.2f}{row['int8_speedup_over_teacher_pytorch']:>10.1f}x")
    print(json.dumps(differences, default=str))


if __name__ == "__main__":
    main()
