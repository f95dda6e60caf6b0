"""Sliced against randomly initialised students of the same shape, on the demo.

    EDGEKD_CACHE=/path/to/cache python benchmarks/shrink.py [--shapes 2x256,2x192,4x192,2x128] [--epochs 2]

The demo teacher (MiniLM-L6 fine-tuned on BBC News, from the cache) and its training split;
for each shape (layers x hidden; heads keep the teacher's size of 32, FFN 4 x hidden) one
student sliced from the teacher (`--student-init slice`, the default) and one from random
weights (`--student-init random`, at edgekd's random-init learning rate), both distilled with
the demo's recipe for the same epochs and seed; the demo's layer cut (2 x 384) as the
baseline row. Each sliced student is also saved with its vocabulary trimmed to the training
text's tokens (edgekd/vocab.py, as `distill --trim-vocab` saves it; no further training).
Recipes for sliced students are compared on one shape (`--recipe-shape`: logit KD at two
learning rates, with hidden-state MSE, with MiniLM relations), and a deep cut made in one
step against the same cut made in two (half the epochs at the intermediate width, sliced
again, the other half at the final one; `--steps-shape`). Test accuracy on the 500 held-out
articles with a paired bootstrap 95% interval of each difference; every student's
onnx-int8 export timed in one interleaved bench run against the teacher (batch 1, 128
tokens, 1 thread). Written to benchmarks/results/shrink.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "shrink.json"
RECIPES = {"slice": 3e-4, "random": 1e-3, "layer cut": 1e-4}  # peak learning rate of each way to start
# recipes tried on the sliced --recipe-shape: name -> DistillConfig changes
SLICED_RECIPES = {"kd lr 1e-4": {"lr": 1e-4}, "kd lr 3e-4": {"lr": 3e-4},
                  "kd + hidden mse lr 3e-4": {"lr": 3e-4, "hidden_mse_weight": 1.0},
                  "kd + minilm lr 3e-4": {"lr": 3e-4, "minilm_weight": 1.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="2x256,2x192,4x192,2x128", help="layers x hidden, comma separated")
    parser.add_argument("--recipe-shape", default="2x192", help="the shape the sliced recipes are compared on")
    parser.add_argument("--steps-shape", default="2x128:2x256", help="final:intermediate shape of the stepwise cut")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--work", type=Path, default=None,
                        help="working folder; students already distilled there (same shapes) are reused")
    parser.add_argument("--note", default="")
    args = parser.parse_args()

    from edgekd.benchmarking.classifier import bench
    from edgekd.progress import silence_libraries
    from edgekd.config import cache_dir
    from edgekd.data import demo_splits, sample_batches
    from edgekd.tasks.text_demo import LAYER_CUT, STUDENT_RECIPE, TEACHER_RECIPE, build_teacher
    from edgekd.training.train import distill
    from edgekd.exporting.stage import export
    from edgekd.metrics import paired_interval
    from edgekd.models import count_parameters, layer_count, load_classifier, parse_layers, save_model, select_layers
    from edgekd.slicing import configured_student
    from edgekd.vocab import plan_trim
    from edgekd.targets import load_target

    silence_libraries()
    started = time.perf_counter()
    splits = demo_splits(seed=0)
    teacher_dir = build_teacher(splits, cache=cache_dir(None), recipe=TEACHER_RECIPE)
    teacher, tokenizer = load_classifier(teacher_dir, role="teacher")
    probe = sample_batches(splits["train"], tokenizer, max_length=STUDENT_RECIPE.max_length, seed=STUDENT_RECIPE.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="edgekd-shrink-"))
    test = splits["test"]
    labels = np.array(test.labels)
    def spec_of(shape: str) -> tuple[int, str]:
        layers, hidden = (int(part) for part in shape.split("x"))
        head_size = teacher.config.hidden_size // teacher.config.num_attention_heads  # kept by a slice
        return layers, f"hidden={hidden},heads={hidden // head_size},layers={layers},intermediate={4 * hidden}"

    # name -> (how it starts, --student-config, DistillConfig changes, what it is sliced from, epochs)
    plan = {"2x384 layer cut": ("layer cut", None, {}, None, args.epochs)}
    for shape in args.shapes.split(","):
        plan[f"{shape} sliced"] = ("slice", spec_of(shape)[1], {}, None, args.epochs)
        plan[f"{shape} random"] = ("random", spec_of(shape)[1], {}, None, args.epochs)
    for recipe, changes in SLICED_RECIPES.items():
        if changes.get("lr") != RECIPES["slice"] or len(changes) > 1:  # "kd lr 3e-4" is the sliced row itself
            plan[f"{args.recipe_shape} sliced, {recipe}"] = ("slice", spec_of(args.recipe_shape)[1], changes, None,
                                                            args.epochs)
    final, middle = args.steps_shape.split(":")
    half = max(1, args.epochs // 2)
    plan[f"{middle} sliced, step 1 of 2"] = ("slice", spec_of(middle)[1], {}, None, half)
    plan[f"{final} sliced in 2 steps"] = ("slice", spec_of(final)[1], {}, f"{middle} sliced, step 1 of 2",
                                          args.epochs - half)
    rows, correct, trimmed = {}, {}, {}
    for name, (init, spec, changes, source, epochs) in plan.items():
        print(f"student {name}", flush=True)
        if spec is None:
            student = select_layers(teacher, parse_layers(LAYER_CUT, layer_count(teacher)))
        elif source is not None:  # the next step of a stepwise cut: sliced from the last step's student
            earlier, _ = load_classifier(work / source.replace(" ", "-").replace(",", "") / "student", role="student")
            student = configured_student(earlier, spec, init=init, probe=probe, seed=STUDENT_RECIPE.seed)
        else:
            student = configured_student(teacher, spec, init=init, probe=probe, seed=STUDENT_RECIPE.seed)
        config = replace(STUDENT_RECIPE, **{"epochs": epochs, "lr": RECIPES[init], **changes})
        folder = work / name.replace(" ", "-").replace(",", "")
        if (folder / "student" / "model.safetensors").is_file() and (folder / "validation.json").is_file():
            validation = json.loads((folder / "validation.json").read_text())  # distilled by an earlier run
        else:
            result = distill(teacher=teacher, student=student, tokenizer=tokenizer, train=splits["train"],
                             validation=splits["validation"], config=config, out=folder / "student", overwrite=True)
            validation = result.validation
            (folder / "validation.json").write_text(json.dumps(validation))
        trained, _ = load_classifier(folder / "student", role="student")
        correct[name] = _correct(trained, tokenizer, test, labels, max_length=config.max_length)
        export(folder / "student", targets=[load_target("onnx-int8")], out=folder / "export", overwrite=True)
        rows[name] = {"init": init, "spec": spec, "params": count_parameters(trained), "lr": config.lr,
                      "epochs": config.epochs, "recipe": changes, "sliced_from": source or "teacher",
                      "test_accuracy": float(correct[name].mean()),
                      "validation": validation, "export": str(folder / "export" / "onnx-int8")}
        if init == "slice" and not changes and source is None and "step" not in name:
            # the same student saved as distill --trim-vocab saves it
            small, small_tokenizer, record = plan_trim(tokenizer, splits["train"].texts, held_out=splits["validation"].texts,
                                                       model_config=trained.config).apply(trained)
            trimmed_name = f"{name} + trimmed"
            save_model(small, small_tokenizer, folder / "trimmed")
            correct[trimmed_name] = _correct(small, small_tokenizer, test, labels, max_length=config.max_length)
            export(folder / "trimmed", targets=[load_target("onnx-int8")], out=folder / "trimmed-export",
                   overwrite=True)
            trimmed[name] = trimmed_name
            rows[trimmed_name] = {**rows[name], "params": count_parameters(small), "vocabulary": record,
                                  "test_accuracy": float(correct[trimmed_name].mean()),
                                  "export": str(folder / "trimmed-export" / "onnx-int8")}
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

    def difference(first: str, second: str) -> dict:
        interval = paired_interval(correct[first], correct[second])
        return {"first": first, "second": second,
                "difference_points": float(100 * (correct[first].mean() - correct[second].mean())),
                "ci95_points": interval, "beyond_noise": bool(interval[0] > 0 or interval[1] < 0)}

    differences = {shape: difference(f"{shape} sliced", f"{shape} random") for shape in args.shapes.split(",")}
    for entry in differences.values():  # the names earlier results used
        entry["sliced_minus_random_points"] = entry["difference_points"]
        entry["sliced_beats_random_beyond_noise"] = bool(entry["ci95_points"][0] > 0)
    recipes = {name: difference(name, f"{args.recipe_shape} sliced")
               for name in rows if name.startswith(f"{args.recipe_shape} sliced, ")}
    steps = difference(f"{final} sliced in 2 steps", f"{final} sliced")
    trimming = {name: difference(trimmed_name, name) for name, trimmed_name in trimmed.items()}
    result = {"benchmark": "shrink", "date": time.strftime("%Y-%m-%d"), "students": rows,
              "sliced_vs_random": differences, "recipes_vs_kd_lr_3e-4": recipes, "two_steps_vs_one": steps,
              "trimmed_vs_untrimmed": trimming, "teacher_accuracy": teacher_row["quality"]["accuracy"],
              "teacher_size_bytes": teacher_row["size_bytes"], "teacher_p50_ms": teacher_row["latency"]["p50_ms"],
              "recipe": asdict(STUDENT_RECIPE), "learning_rates": RECIPES, "machine": report["machine"],
              "warnings": report["warnings"], "wall_s": time.perf_counter() - started, "note": args.note}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\n{'student':<44}{'params M':>10}{'test acc %':>12}{'int8 acc %':>12}{'int8 p50 ms':>13}{'x teacher':>11}")
    for name, row in rows.items():
        print(f"{name:<44}{row['params'] / 1e6:>10.2f}{100 * row['test_accuracy']:>12.1f}"
              f"{100 * row['int8_accuracy']:>12.1f}{row['int8_p50_ms']:>13.2f}{row['int8_speedup_over_teacher_pytorch']:>10.1f}x")
    print(json.dumps({"sliced_vs_random": differences, "recipes": recipes, "steps": steps, "trimming": trimming},
                     default=str, indent=1))


def _correct(model, tokenizer, test, labels: np.ndarray, *, max_length: int) -> np.ndarray:
    from edgekd.data import encode
    from edgekd.metrics import torch_logits

    logits = torch_logits(model, encode(test, tokenizer, max_length=max_length), pad_token_id=tokenizer.pad_token_id)
    return (logits.argmax(-1) == labels).astype(float)


if __name__ == "__main__":
    main()
