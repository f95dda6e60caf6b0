"""Scale of the causal-LM top-k cache: peak memory and bytes per token at 1M, 10M and 50M tokens.

    python benchmarks/scale_top_k.py [--tokens 1000000 10000000 50000000]

Text: the demo corpus's articles (BBC News), repeated with a distinct prefix per copy ("copy
17: ..."), one article per line of a .txt file, until the wanted token count. Each size runs in
its own process, as `edgekd distill` reaches the cache: `read_texts` (Arrow), `encode_texts`
(packed into sequences of 256 tokens, stored on disk and memory-mapped), then
`open_or_build_top_k` with k = 64 (every shard built, as torchrun ranks build theirs before
training; one process builds each shard as training first reads it, with the same memory).

The teacher is not the demo's SmolLM2-135M: its cache build reads about 700 tokens a second on
2 cores (results/lm_demo.json), so 50M tokens would take about 20 hours. It is a random 1-layer Llama (width
32) over a byte-level BPE vocabulary of 512 tokens trained here on the same corpus (a vocabulary
of 4,096 still ran at 10^4 tokens a second, mostly in top-k over the vocabulary): what is
measured is the cache machinery's memory, which does not depend on the teacher's size (the
teacher's own weights add a constant). Its ids fit uint16, as SmolLM2's 49,152 do, so bytes per
token are what the demo's cache stores. Measured per size: peak RSS (VmHWM, read every 20 ms), the
peak of anonymous memory (RssAnon: RSS less the pages of mapped files, which the kernel can take back), seconds,
and the cache's bytes per token. Goal (issue #28): peak RSS <= 3 GB at 50M tokens, bytes per
token as today (k * (2 + 2) = 256 for k = 64).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULT = Path(__file__).resolve().parent / "results" / "scale_top_k.json"
TOP_K, LENGTH, VOCABULARY = 64, 256, 512
GOAL_PEAK_GB = 3.0


def tokenizer_for(folder: Path):
    """A byte-level BPE tokenizer of VOCABULARY tokens trained on the demo corpus (cached in `folder`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import PreTrainedTokenizerFast

    from edgekd.data import demo_corpus

    path = folder / "tokenizer.json"
    if not path.exists():
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=VOCABULARY, special_tokens=["<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tokenizer.train_from_iterator(demo_corpus().texts, trainer)
        tokenizer.save(str(path))
    return PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def write_text(path: Path, tokens: int, tokenizer) -> None:
    """Demo articles, repeated with distinct prefixes, until about `tokens` tokens."""
    from edgekd.data import demo_corpus

    articles = list(demo_corpus().texts)
    per_copy = sum(len(ids) for ids in tokenizer(articles, add_special_tokens=False)["input_ids"])
    copies = -(-tokens // per_copy)
    with path.open("w", encoding="utf-8") as handle:
        for copy in range(copies):
            for article in articles:
                handle.write(f"copy {copy}: {article}\n")


def child(text: Path, folder: Path) -> None:
    """One size: read, encode, build the cache; prints a JSON line."""
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgekd.lm.data import encode_texts, read_texts
    from edgekd.training.cache import open_or_build_top_k

    started = time.perf_counter()
    tokenizer = tokenizer_for(folder)
    texts, _ = read_texts(text)
    examples = encode_texts(texts, tokenizer, max_length=LENGTH, pack=True, store=folder / "tokens")
    encoded = time.perf_counter()
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(vocab_size=VOCABULARY, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                           max_position_embeddings=LENGTH)).eval()
    cache = open_or_build_top_k(teacher, examples, top_k=TOP_K, temperature=1.0, vocabulary=VOCABULARY,
                                root=folder / f"cache-{text.stem}", batch_size=16, show_progress=False)
    stored = sum(path.stat().st_size for path in cache.folder.glob("shard-*/*.npy"))
    positions = sum(int(np.load(path)[-1]) for path in cache.folder.glob("shard-*/offsets-token_ids.npy"))
    tokens = int(examples.input_ids.offsets[-1])
    print(json.dumps({"tokens": tokens, "examples": len(examples), "positions": positions,
                      "cache_bytes": stored, "bytes_per_token": stored / positions,
                      "encode_seconds": encoded - started, "seconds": time.perf_counter() - started}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1_000_000, 10_000_000, 50_000_000])
    parser.add_argument("--work", type=Path, required=True, help="folder for the texts and caches")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        return child(args.child, args.work)
    from edgekd.benchmarking.machine import machine_info
    from scale import memory_kb  # benchmarks/scale.py, beside this file

    tokenizer = tokenizer_for(args.work)
    rows = []
    for tokens in args.tokens:
        text = args.work / f"text-{tokens}.txt"
        if not text.exists():
            write_text(text, tokens, tokenizer)
        environment = {**os.environ, "EDGEKD_CACHE": str(args.work / "edgekd-cache")}
        process = subprocess.Popen([sys.executable, __file__, "--work", str(args.work), "--child", str(text)],
                                   env=environment, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        peak = anonymous = 0
        while process.poll() is None:
            peak, anonymous = max(peak, memory_kb(process.pid)), max(anonymous, memory_kb(process.pid, "RssAnon"))
            time.sleep(0.02)
        output = process.stdout.read()
        if process.returncode:
            raise SystemExit(f"the {tokens}-token run failed: {output[-2000:]}")
        rows.append({"target_tokens": tokens, "text_mb": text.stat().st_size / 2**20, "peak_rss_mb": peak / 1024,
                     "peak_anonymous_mb": anonymous / 1024,
                     **json.loads(output.strip().splitlines()[-1])})
        print(rows[-1], flush=True)
    largest = rows[-1]
    result = {"benchmark": "scale_top_k", "top_k": TOP_K, "sequence": LENGTH, "vocabulary": VOCABULARY, "rows": rows,
              "goal_peak_gb": GOAL_PEAK_GB, "met": largest["peak_rss_mb"] / 1024 <= GOAL_PEAK_GB,
              "machine": machine_info(), "platform": platform.platform(), "note": args.note}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["rows"], indent=1))


if __name__ == "__main__":
    main()
