"""GPU check for causal LMs: the demo's distillation on CUDA (bf16 autocast) against CPU.

    python benchmarks/lm_gpu.py [--steps 40]      # run by benchmarks/gpu_check.sh on a GPU machine

SmolLM2-135M (the demo's GGUF teacher) -> the demo's 20-layer student, the demo's recipe
and training text, the same seed, for --steps steps on each device; the CUDA student's
held-out perplexity must be within 5% of the CPU student's. Writes tokens/s and
perplexities to benchmarks/results/lm_gpu.json; exits 1 when the check fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import torch

RESULT = Path(__file__).resolve().parent / "results" / "lm_gpu.json"
TOLERANCE = 0.05  # relative perplexity difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="Distillation steps on each device.")
    args = parser.parse_args()
    from edgekd.lm.bench import quality, torch_logits_fn
    from edgekd.lm.data import encode_texts
    from edgekd.lm.demo import LMDemoConfig, demo_texts
    from edgekd.lm.models import demo_gguf_path, dequantised_gguf, load_causal_lm, make_lm_student, probe_batch
    from edgekd.lm.train import distill_lm

    if not torch.cuda.is_available():
        sys.exit("no CUDA device: run this on a GPU machine (benchmarks/gpu_check.sh)")
    config = LMDemoConfig()
    teacher, tokenizer = load_causal_lm(dequantised_gguf(demo_gguf_path()))
    train_texts, eval_texts = demo_texts(config)
    train = encode_texts(train_texts, tokenizer, max_length=config.distill.max_length)
    held_out = encode_texts(eval_texts, tokenizer, max_length=config.distill.max_length)
    runs = {}
    with tempfile.TemporaryDirectory() as work:
        for device in ("cuda", "cpu"):
            student, _ = make_lm_student(teacher, tokenizer, layers=config.student_layers, probe=probe_batch(train))
            distill_config = replace(config.distill, max_steps=args.steps, device=device)
            result = distill_lm(teacher=teacher, student=student, tokenizer=tokenizer, train=train,
                                config=distill_config, out=Path(work) / device,
                                vocabulary=teacher.get_output_embeddings().out_features,
                                cache_root=Path(work) / f"cache-{device}", show_progress=False)
            trained, _ = load_causal_lm(Path(work) / device, role="student")
            held_out_quality = quality(torch_logits_fn(trained), held_out, vocabulary=trained.config.vocab_size)
            runs[device] = {"perplexity": held_out_quality["perplexity"], "final_loss": result.final_loss,
                            "tokens_per_second": result.tokens_per_second, "seconds": result.seconds}
            teacher.cpu()
            print(device, json.dumps(runs[device]), flush=True)
    difference = abs(runs["cuda"]["perplexity"] / runs["cpu"]["perplexity"] - 1)
    passed = difference <= TOLERANCE
    result = {"check": f"CUDA bf16 student's held-out perplexity within {TOLERANCE:.0%} of the CPU student's",
              "passed": passed, "relative_difference": difference, "runs": runs, "steps": args.steps,
              "config": asdict(config.distill), "gpu": torch.cuda.get_device_name(0),
              "torch": torch.__version__, "machine": platform.platform()}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({"passed": passed, "relative_difference": round(difference, 4)}))
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
