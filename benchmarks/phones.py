"""Phones for real, on the demo student: int8 ExecuTorch, the tokenizer inside the graph, arm64.

    python benchmarks/phones.py [--student runs/demo/student] [--repeats 200]   # after `make demo`

Goals (checked and written to benchmarks/results/phones.json):
- ExecuTorch int8 .pte: size <= 0.35x the fp32 .pte, test accuracy within the int8 budget
  (1 point) of the fp32 .pte, p50 <= 0.8x the fp32 .pte (batch 1, 128 tokens, 1 thread);
- the model with the tokenizer inside: the same predictions as the plain int8 artifact on the
  whole demo test split, and p50 with tokenization included <= 1.15x without (batch 1, 1 thread,
  a test article cut at a word to at most 128 tokens, so both models run the same tokens).
  Also timed: the whole article, which the operator tokenizes to its end before it
  truncates to 128, so tokenization costs more there; the first test article with a
  non-ASCII character (a pound sign), cut the same way; and the first article again with
  typographic apostrophes (U+2019), whose first UTF-8 byte is one of the removal class's
  lead bytes, so the graph's regex runs (the slow path: tokenizer_graph._removal);
- arm64: the demo's onnx-int8 and ort-mobile artifacts pass `--verify arm64` (and so do the
  same models with the tokenizer inside, on the validation text as strings).
Latencies are measured interleaved in one run (A B A B ...); medians and their ratios.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "phones.json"


def cut(tokenizer, text: str, length: int) -> str:
    """The longest prefix of whole words of `text` with at most `length` tokens."""
    words = text.split()
    low, high = 1, len(words)
    while low < high:
        middle = (low + high + 1) // 2
        if len(tokenizer(" ".join(words[:middle]))["input_ids"]) <= length:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, default=ROOT / "runs" / "demo" / "student")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()

    import torch

    from edgekd.benchmarking.latency import measure_interleaved, summarize
    from edgekd.benchmarking.feeds import text_of_length
    from edgekd.benchmarking.machine import machine_info
    from edgekd.data import demo_splits
    from edgekd.exporting.stage import export
    from edgekd.sessions import string_feeds
    from edgekd.exporting.validation import session_logits, validation_set
    from edgekd.exporting.onnx import input_names_of
    from edgekd.models import load_classifier
    from edgekd.sessions import ExecutorchSession, executorch_threads, onnx_session
    from edgekd.targets import load_target

    torch.set_num_threads(1)
    executorch_threads(1)
    splits = demo_splits(seed=0)
    model, tokenizer = load_classifier(args.student, role="student")
    names = input_names_of(model, tokenizer)
    test = validation_set(splits["test"], model=model, tokenizer=tokenizer, input_names=names,
                          max_length=128, source="demo test split")
    result: dict = {"machine": machine_info(), "student": str(args.student), "repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="edgekd-phones-") as scratch:
        out = Path(scratch)
        started = time.perf_counter()
        pte_fp32, pte_int8 = export(args.student, targets=[load_target("executorch"), load_target("executorch-int8")],
                                    out=out, validation=splits["validation"], validation_source="demo validation split")
        pte_seconds = time.perf_counter() - started
        started = time.perf_counter()
        onnx_int8, ort_mobile = export(args.student, targets=[load_target("onnx-int8"), load_target("ort-mobile")],
                                       out=out, validation=splits["validation"],
                                       validation_source="demo validation split", with_tokenizer=True,
                                       verify=("arm64",))
        onnx_seconds = time.perf_counter() - started

        # ExecuTorch: size, accuracy on the test split, latency
        pte = {artifact.precision: ExecutorchSession(artifact.model_file, names) for artifact in (pte_fp32, pte_int8)}
        accuracy = {}
        for precision, session in pte.items():
            logits = np.concatenate([session.run(["logits"], {k: v[i:i + 1] for k, v in feeds.items()})[0]
                                     for feeds in test.feeds_list for i in range(len(next(iter(feeds.values()))))])
            accuracy[precision] = 100.0 * float((logits.argmax(-1) == test.labels).mean())
        text = text_of_length(tokenizer, splits["test"].texts[0], 128)
        encoded = tokenizer([text], truncation=True, max_length=128, return_tensors="np")
        feeds = {name: encoded[name].astype(np.int64) for name in names}
        inputs = [torch.from_numpy(feeds[name]) for name in names]
        seconds = measure_interleaved({precision: (lambda s=session: s.method.execute(inputs))
                                       for precision, session in pte.items()}, repeats=args.repeats, warmup=5)
        p50 = {precision: float(np.median(values)) for precision, values in seconds.items()}
        manifest = json.loads((pte_int8.folder / "edgekd.json").read_text())
        result["executorch"] = {
            "fp32": {"size_bytes": pte_fp32.size_bytes, "test_accuracy": accuracy["fp32"],
                     "latency": summarize(seconds["fp32"])},
            "int8": {"size_bytes": pte_int8.size_bytes, "test_accuracy": accuracy["int8-dynamic"],
                     "latency": summarize(seconds["int8-dynamic"]), "delegation": manifest["delegation"],
                     "validation": manifest["accuracy"]},
            "size_ratio": pte_int8.size_bytes / pte_fp32.size_bytes,
            "accuracy_drop": accuracy["fp32"] - accuracy["int8-dynamic"],
            "p50_ratio": p50["int8-dynamic"] / p50["fp32"], "export_seconds": pte_seconds}

        # the tokenizer inside the graph, against the plain model of the same folder
        result["with_tokenizer"] = {"export_seconds": onnx_seconds}
        texts = splits["test"].texts
        for artifact in (onnx_int8, ort_mobile):
            entry = json.loads((artifact.folder / "edgekd.json").read_text())
            mobile = artifact.format == "ort"
            plain = onnx_session(artifact.model_file, ort_format=mobile)
            inside = onnx_session(artifact.folder / entry["with_tokenizer"]["model_file"], ort_format=mobile,
                                  custom_ops=True)
            plain_logits = session_logits(plain, test.feeds_list)
            chunks = [texts[i:i + 32] for i in range(0, len(texts), 32)]  # the same rows per batch as test.feeds_list
            inside_logits, exact = zip(*(inside.run(["logits", "exact"], string_feeds(chunk, None)) for chunk in chunks))
            inside_logits, exact = np.concatenate(inside_logits), np.concatenate(exact)
            timed = {}
            other = text_of_length(tokenizer, next(t for t in splits["test"].texts if not t.isascii()), 128)
            settings = (("cut", cut(tokenizer, text, 128)), ("article", text),
                        ("non_ascii", cut(tokenizer, other, 128)),
                        ("typographic", cut(tokenizer, text.replace("'", "\u2019"), 128)))
            for setting, string in settings:
                ids = tokenizer([string], truncation=True, max_length=128, return_tensors="np")
                plain_feeds = {name: ids[name].astype(np.int64) for name in names}
                single = {"text": np.array([string], dtype=object)}
                seconds = measure_interleaved({"without": lambda f=plain_feeds: plain.run(["logits"], f),
                                               "with": lambda f=single: inside.run(["logits"], f)},
                                              repeats=args.repeats, warmup=5)
                timed[setting] = {"tokens": int(ids["input_ids"].shape[1]), "characters": len(string),
                                  "latency_without": summarize(seconds["without"]),
                                  "latency_with": summarize(seconds["with"]),
                                  "p50_ratio": float(np.median(seconds["with"]) / np.median(seconds["without"]))}
            result["with_tokenizer"][artifact.target] = {
                "test_rows": len(texts), "exact_rows": int(exact.sum()),
                "same_predictions": int((inside_logits.argmax(-1) == plain_logits.argmax(-1)).sum()),
                "max_abs_logit_diff": float(np.abs(inside_logits - plain_logits).max()),
                "test_accuracy": 100.0 * float((inside_logits.argmax(-1) == test.labels).mean()),
                "plain_test_accuracy": 100.0 * float((plain_logits.argmax(-1) == test.labels).mean()),
                "timing": timed, "p50_ratio": timed["cut"]["p50_ratio"],
                "size_bytes": entry["with_tokenizer"]["size_bytes"], "plain_size_bytes": artifact.size_bytes,
                "export_checks": {key: entry["with_tokenizer"][key] for key in ("token_parity", "logit_parity",
                                                                                 "unsafe_characters")}}
            result.setdefault("arm64", {})[artifact.target] = entry["verified"]["arm64"]
            result["arm64"][f"{artifact.target} + tokenizer"] = entry["with_tokenizer"]["verified"]["arm64"]

    executorch, inside = result["executorch"], result["with_tokenizer"]
    result["goals"] = {
        "pte_int8_size_at_most_0.35x": executorch["size_ratio"] <= 0.35,
        "pte_int8_accuracy_within_1_point": executorch["accuracy_drop"] <= 1.0,
        "pte_int8_p50_at_most_0.8x": executorch["p50_ratio"] <= 0.8,
        "tokenizer_same_predictions_on_test": all(inside[t]["same_predictions"] == inside[t]["test_rows"]
                                                  for t in ("onnx-int8", "ort-mobile")),
        "tokenizer_p50_at_most_1.15x": all(inside[t]["p50_ratio"] <= 1.15 for t in ("onnx-int8", "ort-mobile")),
        "arm64_passed": all(entry["passed"] for entry in result["arm64"].values())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"executorch": {k: v for k, v in executorch.items() if k not in ("fp32", "int8")},
                      "tokenizer_p50_ratio": {t: inside[t]["p50_ratio"] for t in ("onnx-int8", "ort-mobile")},
                      "goals": result["goals"]}, indent=2))


if __name__ == "__main__":
    main()
