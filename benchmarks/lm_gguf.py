"""The causal-LM demo student in llama.cpp: gguf-q4_k_m against onnx-int4, in one interleaved run.

    EDGEKD_CACHE=/path/to/cache python benchmarks/lm_gguf.py --student runs/lm-demo/student

Needs the llama extra (`make test-llama` installs it). Exports the student to `onnx-int4`,
`gguf-q8_0` and `gguf-q4_k_m` and the teacher (SmolLM2-135M) to `gguf-q4_k_m` (what a
llama.cpp user would run without distillation), each the way `edgekd export` does
(quantised files held to their perplexity budget on the demo's BBC training articles, scored
by llama.cpp), then benches them all with the teacher and the student in PyTorch on the
demo's held-out articles: perplexity, next-token agreement with the teacher, decode
tokens/s at 1 thread (interleaved rounds, medians), size, peak memory.

Goals (benchmarks/results/lm_gguf.json): the student's gguf-q4_k_m decodes at least as many
tokens/s as its onnx-int4 artifact, at a held-out perplexity no worse than 1.1x onnx-int4's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "lm_gguf.json"
sys.path.insert(0, str(ROOT / "benchmarks"))
STUDENT_TARGETS = ("onnx-int4", "gguf-q8_0", "gguf-q4_k_m")


def main() -> None:
    from lm_exports import arguments, export_and_bench

    args = arguments(__doc__.splitlines()[0], rounds=5, result=RESULT)
    from edgekd.benchmarking.machine import machine_info
    from edgekd.errors import atomic_write_text

    report, artifacts, seconds = export_and_bench(args.student, student_targets=STUDENT_TARGETS,
                                                  teacher_targets=("gguf-q4_k_m",), max_length=args.max_length,
                                                  rounds=args.rounds)
    rows = {row["name"]: row for row in report["rows"]}
    q4, int4 = rows["student/gguf-q4_k_m"], rows["student/onnx-int4"]
    measured = {"q4_k_m_over_int4_decode_speed": q4["latency"]["decode_tokens_per_second"]
                / int4["latency"]["decode_tokens_per_second"],
                "q4_k_m_over_int4_perplexity": q4["quality"]["perplexity"] / int4["quality"]["perplexity"],
                "q4_k_m_speedup_over_teacher_q4_k_m": q4["speedup_same_target"]}
    result = {
        "exports": {name: {"seconds": seconds[name], "size_bytes": a.size_bytes,
                           "greedy_agreement": a.greedy_agreement, "perplexity_ratio_on_gate": a.perplexity_ratio}
                    for name, a in artifacts.items()},
        "measured": measured,
        "goals": {"q4_k_m_decodes_at_least_as_fast_as_onnx_int4": measured["q4_k_m_over_int4_decode_speed"] >= 1.0,
                  "q4_k_m_perplexity_within_1.1x_of_onnx_int4": measured["q4_k_m_over_int4_perplexity"] <= 1.1},
        "rows": [{"name": r["name"], "runtime": r["runtime"], "perplexity": r["quality"]["perplexity"],
                  "top1_agreement": r["quality"].get("top1_agreement"), "size_bytes": r["size_bytes"],
                  "decode_tokens_per_second": r["latency"]["decode_tokens_per_second"],
                  "prefill_tokens_per_second": r["latency"]["prefill_tokens_per_second"],
                  "ms_per_token": r["latency"]["p50_ms"], "speedup": r["speedup"],
                  "speedup_same_target": r["speedup_same_target"],
                  "peak_rss_mb": (r["memory"] or {}).get("peak_rss_mb")} for r in rows.values()],
        "max_length": args.max_length, "rounds": args.rounds, "held_out_texts": report["data"]["rows"],
        "warnings": report["warnings"], "machine": machine_info(), "llama_cpp": _llama_cpp_build()}
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps({"measured": measured, "goals": result["goals"]}, indent=2))


def _llama_cpp_build() -> dict:
    """The llama.cpp build that ran: its version and the CPU features compiled in."""
    import llama_cpp

    return {"version": llama_cpp.__version__, "system_info": llama_cpp.llama_print_system_info().decode().strip()}


if __name__ == "__main__":
    main()
