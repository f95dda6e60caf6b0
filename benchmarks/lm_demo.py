"""The causal-LM demo's numbers: SmolLM2-135M distilled into two thirds of its layers.

    EDGEKD_CACHE=/path/to/cache python benchmarks/lm_demo.py [--note "..."]

Runs the demo (edgekd.lm.demo: top-k teacher cache, distillation, export fp32/int8/int4,
bench at 1 thread), then, in the same run:
- the same student trained with cross-entropy only for the same steps (the baseline),
  compared on held-out perplexity with a paired bootstrap interval over held-out texts;
- the sparse cache's size per token and the speedup of a cached step over a step that
  runs the teacher (interleaved rounds, medians).

Goals (written to benchmarks/results/lm_demo.json):
- int4 or int8 student decode tokens/s >= 4x the teacher's in PyTorch fp32, 1 thread;
- student perplexity on held-out text <= 1.5x the teacher's;
- the distilled student's held-out perplexity below the cross-entropy-only student's.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "lm_demo.json"


def per_text_nll(model, examples) -> list[tuple[float, int]]:
    """(summed next-token NLL, tokens) per held-out text."""
    results = []
    with torch.no_grad():
        for ids in examples.input_ids:
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            results.append((float(F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum")), len(ids) - 1))
    return results


def perplexity(nll: list[tuple[float, int]]) -> float:
    return math.exp(sum(n for n, _ in nll) / sum(t for _, t in nll))


def paired_bootstrap(first, second, *, samples: int = 2000, seed: int = 0) -> dict:
    """95% interval of log-perplexity(first) - log-perplexity(second), resampling texts."""
    generator = random.Random(seed)
    count, differences = len(first), []
    for _ in range(samples):
        picks = [generator.randrange(count) for _ in range(count)]
        tokens = sum(first[i][1] for i in picks)
        differences.append((sum(first[i][0] for i in picks) - sum(second[i][0] for i in picks)) / tokens)
    differences.sort()
    return {"mean_nll_difference": (sum(n for n, _ in first) - sum(n for n, _ in second)) / sum(t for _, t in first),
            "ci95": [differences[int(0.025 * samples)], differences[int(0.975 * samples)]]}


def cache_speedup(teacher, student, examples, cache, config, *, rounds: int = 3) -> dict:
    """Median seconds of one training step with the teacher online vs read from the cache."""
    from edgekd.lm.data import collate
    from edgekd.lm.train import step_loss

    batch = collate(examples, list(range(config.batch_size)))
    vocabulary = teacher.get_output_embeddings().out_features
    dense_config = replace(config, top_k=0)
    timings = {"teacher_online": [], "top_k_cache": []}
    for _ in range(rounds):
        for name, (source, use_cache, step_config) in {
                "teacher_online": (teacher, None, dense_config),
                "top_k_cache": (None, cache, config)}.items():
            started = time.perf_counter()
            loss = step_loss(student, batch, teacher=source, cache=use_cache, vocabulary=vocabulary,
                             config=step_config)
            loss.backward()
            student.zero_grad(set_to_none=True)
            timings[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    return {"step_seconds": medians, "samples": timings,
            "speedup": medians["teacher_online"] / medians["top_k_cache"]}


def demo_config(arguments):
    """The demo's defaults, with the budget given on the command line (for a loaded machine)."""
    from edgekd.lm.demo import LMDemoConfig

    defaults = LMDemoConfig()
    distill = replace(defaults.distill, max_steps=arguments.steps or defaults.distill.max_steps,
                      lr=arguments.lr or defaults.distill.lr)
    return replace(defaults, distill=distill, eval_texts=arguments.eval_texts or defaults.eval_texts)


def train_baseline(config, work: Path):
    """The same student, the same steps and data, cross-entropy only: OUT/ce-only."""
    from edgekd.lm.data import encode_texts
    from edgekd.lm.demo import demo_texts
    from edgekd.lm.models import demo_gguf_path, dequantised_gguf, load_causal_lm, make_lm_student, probe_batch
    from edgekd.lm.train import distill_lm

    teacher, tokenizer = load_causal_lm(dequantised_gguf(demo_gguf_path()))
    train = encode_texts(demo_texts(config)[0], tokenizer, max_length=config.distill.max_length)
    baseline, _ = make_lm_student(teacher, tokenizer, layers=config.student_layers, probe=probe_batch(train))
    distill_lm(teacher=None, student=baseline, tokenizer=tokenizer, train=train,
               config=replace(config.distill, hard_label_weight=1.0), out=work / "ce-only", overwrite=True,
               vocabulary=teacher.get_output_embeddings().out_features, show_progress=True)
    return baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--note", default="", help="Free text saved with the result (e.g. machine load).")
    parser.add_argument("--out", type=Path, default=None, help="Working folder (default: a temporary one).")
    parser.add_argument("--baseline-only", action="store_true",
                        help="Only train the cross-entropy-only student into OUT/ce-only (to run it "
                             "in a second process beside the demo).")
    parser.add_argument("--reuse", action="store_true",
                        help="Reuse a finished demo (OUT/demo/report.json) and CE-only student in OUT.")
    parser.add_argument("--steps", type=int, default=None, help="Distillation steps (default: the demo's).")
    parser.add_argument("--lr", type=float, default=None, help="Peak learning rate (default: the demo's).")
    parser.add_argument("--eval-texts", type=int, default=None, help="Held-out texts (default: the demo's).")
    arguments = parser.parse_args()
    torch.manual_seed(0)

    from edgekd.training.cache import open_or_build_top_k as open_or_build
    from edgekd.benchmarking.report import print_table
    from edgekd.lm.data import encode_texts
    from edgekd.demo import run
    from edgekd.lm.demo import LMDemo, demo_texts
    from edgekd.lm.models import demo_gguf_path, dequantised_gguf, load_causal_lm, make_lm_student, probe_batch

    config = demo_config(arguments)
    work = arguments.out or Path(tempfile.mkdtemp(prefix="edgekd-lm-demo-"))
    if arguments.baseline_only:
        train_baseline(demo_config(arguments), work)
        return
    started = time.perf_counter()
    partial = RESULT.with_suffix(".partial.json")
    if arguments.reuse and partial.is_file() and (work / "demo" / "report.json").is_file():
        report = json.loads(partial.read_text())  # the demo's report, timings included
        demo_seconds = sum(report["demo"]["timings"].values())
    else:
        report = run(LMDemo(config, overwrite=True), out=work / "demo")
        demo_seconds = time.perf_counter() - started
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(report, indent=2, default=str))
    print_table(report)

    # the baseline: same student, same steps, cross-entropy only
    teacher_dir = dequantised_gguf(demo_gguf_path())
    teacher, tokenizer = load_causal_lm(teacher_dir)
    vocabulary = teacher.get_output_embeddings().out_features
    train_texts, eval_texts = demo_texts(config)
    train = encode_texts(train_texts, tokenizer, max_length=config.distill.max_length)
    held_out = encode_texts(eval_texts, tokenizer, max_length=config.distill.max_length)
    if arguments.reuse and (work / "ce-only" / "model.safetensors").is_file():
        baseline, _ = load_causal_lm(work / "ce-only", role="student")
    else:
        baseline = train_baseline(config, work)
    distilled, _ = load_causal_lm(work / "demo" / "student", role="student")
    nll = {"teacher": per_text_nll(teacher, held_out), "distilled": per_text_nll(distilled, held_out),
           "ce_only": per_text_nll(baseline, held_out)}
    comparison = {name: {"perplexity": perplexity(values)} for name, values in nll.items()}
    comparison["distilled_minus_ce_only"] = paired_bootstrap(nll["distilled"], nll["ce_only"])

    # the sparse cache: size per token and step speedup
    cache = open_or_build(teacher, train, top_k=config.distill.top_k, temperature=config.distill.temperature,
                          vocabulary=vocabulary, show_progress=False)
    fresh, _ = make_lm_student(teacher, tokenizer, layers=config.student_layers, probe=probe_batch(train))
    fresh.train()
    speed = cache_speedup(teacher, fresh, train, cache, config.distill)
    cache_result = {"top_k": cache.top_k, "bytes_per_token": cache.bytes_per_token,
                    "dense_fp16_bytes_per_token": vocabulary * 2,
                    "build_seconds": cache.build_seconds, **speed}

    rows = {row["name"]: row for row in report["rows"]}
    quantised = {name: row for name, row in rows.items() if name in ("student/onnx-int8", "student/onnx-int4")}
    best = max(quantised, key=lambda name: quantised[name]["speedup"])
    goals = {
        "quantised_decode_speedup_at_least_4x": {
            "value": quantised[best]["speedup"], "artifact": best, "met": quantised[best]["speedup"] >= 4},
        "student_perplexity_at_most_1.5x_teacher": {
            "value": rows["student"]["perplexity_ratio_vs_teacher"],
            "met": rows["student"]["perplexity_ratio_vs_teacher"] <= 1.5},
        "distilled_beats_ce_only": {
            "distilled_perplexity": comparison["distilled"]["perplexity"],
            "ce_only_perplexity": comparison["ce_only"]["perplexity"],
            "ci95_log_perplexity_difference": comparison["distilled_minus_ce_only"]["ci95"],
            "met": comparison["distilled_minus_ce_only"]["ci95"][1] < 0},
    }
    result = {"benchmark": "lm_demo", "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(),
                                                  "python": sys.version.split()[0], "torch": torch.__version__},
              "note": arguments.note, "demo_seconds": demo_seconds,
              "config": {"student_layers": config.student_layers, "train_texts": config.train_texts,
                         "eval_texts": config.eval_texts, "distill": asdict(config.distill),
                         "targets": list(config.targets)},
              "report": report, "ce_only_comparison": comparison, "cache": cache_result, "goals": goals}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2, default=str))
    RESULT.with_suffix(".partial.json").unlink(missing_ok=True)
    print(f"\ncache: {cache_result['bytes_per_token']:.0f} B/token (k={cache.top_k}); step speedup "
          f"{speed['speedup']:.2f}x over running the teacher")
    print(f"held-out perplexity: teacher {comparison['teacher']['perplexity']:.2f}, distilled "
          f"{comparison['distilled']['perplexity']:.2f}, CE-only {comparison['ce_only']['perplexity']:.2f}")
    for name, goal in goals.items():
        print(f"goal {name}: {'met' if goal['met'] else 'MISSED'}  {json.dumps({k: v for k, v in goal.items() if k != 'met'})}")
    print(json.dumps({"demo_seconds": round(demo_seconds), "goals_met": {k: g["met"] for k, g in goals.items()}}))


if __name__ == "__main__":
    main()
