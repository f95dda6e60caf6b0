"""The causal-LM demo student as ExecuTorch programs with the key/value cache inside.

    EDGEKD_CACHE=/path/to/cache python benchmarks/lm_pte.py --student runs/lm-demo/student

Exports `executorch` (fp32) and `executorch-8da4w` the way `edgekd export` does (greedy
tokens of 3 prompts checked against PyTorch's; 8da4w held to its perplexity budget on the
demo's BBC training articles) beside `onnx-int4`, then benches the teacher, the student and
the three exports on the demo's held-out articles: perplexity, next-token agreement with the
teacher, decode tokens/s at 1 thread (interleaved rounds, medians), size.

Checked (benchmarks/results/lm_pte.json): the fp32 .pte generates PyTorch's greedy tokens
exactly; the 8da4w .pte is within its 2x perplexity budget of the fp32 export.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "lm_pte.json"
sys.path.insert(0, str(ROOT / "benchmarks"))
TARGETS = ("executorch", "executorch-8da4w", "onnx-int4")


def main() -> None:
    from lm_exports import arguments, export_and_bench

    args = arguments(__doc__.splitlines()[0], rounds=3, result=RESULT)
    from edgekd.benchmarking.machine import machine_info
    from edgekd.errors import atomic_write_text

    report, exported, seconds = export_and_bench(args.student, student_targets=TARGETS, max_length=args.max_length,
                                                 rounds=args.rounds)
    artifacts = {name: exported[f"student/{name}"] for name in TARGETS}
    seconds = {name: seconds[f"student/{name}"] for name in TARGETS}
    manifests = {name: json.loads(report["manifests"][f"student/{name}"]) for name in TARGETS}
    rows = {row["name"]: row for row in report["rows"]}
    result = {
        "exports": {name: {"seconds": seconds[name], "size_bytes": a.size_bytes, "greedy_agreement": a.greedy_agreement,
                           "exact": a.exact, "perplexity_ratio_on_gate": a.perplexity_ratio,
                           "delegation": manifests[name].get("delegation"),
                           "greedy_agreement_with_pytorch_same_precision":
                               manifests[name].get("greedy_agreement_with_pytorch_same_precision")}
                    for name, a in artifacts.items()},
        "checks": {"fp32_pte_greedy_tokens_equal_pytorch": artifacts["executorch"].exact,
                   "8da4w_within_its_perplexity_budget": artifacts["executorch-8da4w"].perplexity_ratio <= 2.0},
        "rows": [{"name": r["name"], "runtime": r["runtime"], "perplexity": r["quality"]["perplexity"],
                  "top1_agreement": r["quality"].get("top1_agreement"), "size_bytes": r["size_bytes"],
                  "decode_tokens_per_second": r["latency"]["decode_tokens_per_second"],
                  "ms_per_token": r["latency"]["p50_ms"], "speedup": r["speedup"]} for r in rows.values()],
        "max_length": args.max_length, "rounds": args.rounds, "held_out_texts": report["data"]["rows"],
        "machine": machine_info()}
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["checks"]))


if __name__ == "__main__":
    main()
