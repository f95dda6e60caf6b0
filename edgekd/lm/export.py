"""Causal LM -> ONNX with key/value-cache inputs and outputs; int8, 4-bit and .ort variants.

The graph takes `input_ids` (batch, new), `attention_mask` (batch, past + new) and, per
layer, `past_key.<i>` / `past_value.<i>` (batch, kv_heads, past, head_dim); it returns
`logits` (batch, new, vocab) and `present_key.<i>` / `present_value.<i>` with past + new
positions. A prompt is one call with an empty cache (past = 0); each generated token is
one more call with the presents fed back. Position ids and the causal mask are computed
inside the graph from `attention_mask`, so a caller needs nothing model-specific.

Every export is generated greedily in ONNX Runtime and compared token for token with
PyTorch's greedy generation (fp32 must match exactly; a mismatch is an error). Quantised
exports are held to a perplexity budget on gate text (the user's held-out text, or text
sampled from the fp32 model when none is given): int8 by a search over which MatMuls stay
float (edgekd/lm/quantize.py), int4 by a check that fails the export when over budget.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from edgekd.errors import GateFailed, UserError, atomic_dir

OPSET = 17
GATE_TEXTS = 16  # texts the perplexity budget is measured on
GATE_TOKENS = 128  # tokens per gate text


@dataclass(frozen=True)
class LMTarget:
    """One way to ship a causal LM."""

    name: str
    precision: str  # fp32, int8 (dynamic, MatMul weights) or int4 (MatMulNBits, weight-only)
    ort_format: bool = False  # also convert to ONNX Runtime Mobile's .ort
    description: str = ""
    # largest perplexity / fp32 perplexity on the gate text (None: no perplexity gate)
    max_perplexity_ratio: float | None = None


LM_TARGETS = {
    "fp32": LMTarget("fp32", "fp32", description="reference export; greedy tokens equal PyTorch's"),
    "int8": LMTarget("int8", "int8", max_perplexity_ratio=1.10,
                     description="dynamic int8 MatMuls; the worst-quantising ones stay float "
                                 "so perplexity stays within 1.1x fp32"),
    # 4-bit round-to-nearest weights commonly cost a small decoder a third or more of its
    # perplexity; the gate is there to stop a broken export, not to grade a working one
    "int4": LMTarget("int4", "int4", max_perplexity_ratio=2.0,
                     description="4-bit weight-only MatMulNBits, block 32; fails over 2x fp32 perplexity"),
    "int8-ort": LMTarget("int8-ort", "int8", ort_format=True, max_perplexity_ratio=1.10,
                         description="int8 (searched as above) as .ort for ORT Mobile"),
}


class DecoderWithCache(torch.nn.Module):
    """A flat-tensor interface around a Hugging Face causal LM, for tracing."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.layers = model.config.num_hidden_layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for layer in range(self.layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        new = input_ids.shape[1]
        # positions count real tokens only, so left padding in a batch is harmless
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -new:]
        output = self.model(input_ids=input_ids, attention_mask=causal_mask(attention_mask, new),
                            position_ids=position_ids, past_key_values=cache, use_cache=True)
        presents = []
        for layer in range(self.layers):
            presents += [output.past_key_values.layers[layer].keys,
                         output.past_key_values.layers[layer].values]
        return (output.logits, *presents)


def causal_mask(attention_mask: torch.Tensor, new: int) -> torch.Tensor:
    """(batch, 1, new, total) additive float mask: a query sees earlier real tokens only."""
    total = attention_mask.shape[1]
    key_positions = torch.arange(total, device=attention_mask.device)
    query_positions = key_positions[total - new:]
    allowed = (key_positions[None, :] <= query_positions[:, None])[None, None]
    allowed = allowed & attention_mask[:, None, None, :].bool()
    return torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)


def cache_shape(config) -> tuple[int, int]:
    """(kv_heads, head_dim) of each layer's cache."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return kv_heads, head_dim


def io_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_{kind}.{i}" for i in range(layers) for kind in ("key", "value")]
    present = [f"present_{kind}.{i}" for i in range(layers) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", *past], ["logits", *present]


def export_fp32(model: torch.nn.Module, path: Path) -> None:
    """Trace with a two-token step on a three-token cache, with dynamic batch/sequence axes."""
    model = model.eval().float()
    layers = model.config.num_hidden_layers
    kv_heads, head_dim = cache_shape(model.config)
    input_ids = torch.tensor([[5, 6], [7, 8]])
    attention_mask = torch.ones((2, 5), dtype=torch.long)
    past = [torch.randn(2, kv_heads, 3, head_dim) for _ in range(2 * layers)]
    inputs, outputs = io_names(layers)
    axes = {"input_ids": {0: "batch", 1: "new"}, "attention_mask": {0: "batch", 1: "total"},
            "logits": {0: "batch", 1: "new"}}
    axes.update({name: {0: "batch", 2: "past"} for name in inputs[2:]})
    axes.update({name: {0: "batch", 2: "total"} for name in outputs[1:]})
    try:
        with torch.no_grad():
            torch.onnx.export(DecoderWithCache(model), (input_ids, attention_mask, *past), str(path),
                              dynamo=False, input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True)
    except Exception as error:  # the tracer raises many types with long texts
        raise UserError(f"cannot export {type(model).__name__} to ONNX: "
                        f"{str(error).strip().splitlines()[0][:200]}") from error


def quantize_int4(source: Path, destination: Path) -> None:
    """4-bit weight-only MatMulNBits, symmetric blocks of 32; accuracy level 4 lets the CPU
    kernel multiply in int8, the fast path on x86 and ARM."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), bits=4, block_size=32,
                                     is_symmetric=True, accuracy_level=4)
    quantizer.process()
    quantizer.model.save_model_to_file(str(destination), use_external_data_format=False)


@dataclass(frozen=True)
class LMArtifact:
    """One exported target: where it is and how it compared with PyTorch."""

    target: str
    folder: Path
    model_file: str
    size_bytes: int
    greedy_agreement: float  # share of generated tokens equal to PyTorch's greedy tokens
    exact: bool  # every generated token equal
    perplexity_ratio: float | None = None  # on the gate text, against the fp32 export
    kept_float: int = 0  # MatMuls the int8 search kept in float


PARITY_PROMPTS = ("The government said on Monday that", "Shares in the company",
                  "The film, which stars")


@dataclass(frozen=True)
class Gate:
    """The text quantised exports are held to, and the fp32 export's perplexity on it."""

    texts: list[list[int]]
    source: str  # where the text came from, for the manifest
    fp32_perplexity: float

    def describe(self, perplexity: float, budget: float) -> dict:
        return {"source": self.source, "texts": len(self.texts),
                "tokens": sum(len(ids) - 1 for ids in self.texts),
                "fp32_perplexity": self.fp32_perplexity, "perplexity": perplexity,
                "ratio": perplexity / self.fp32_perplexity, "max_ratio": budget}


def export_lm(student_dir: Path, *, targets: list[str], out: Path, overwrite: bool = False,
              max_length: int = 512, parity_tokens: int = 16, gate_texts: list[str] | None = None,
              gate_source: str = "held-out text", max_perplexity_ratio: float | None = None,
              show_progress: bool = True) -> list[LMArtifact]:
    """Export the causal LM in `student_dir` to `out/<target>/` for each target, each checked.

    Quantised targets are held to `max_perplexity_ratio` (default: each target's own) on
    `gate_texts`; without them, on text sampled from the student itself.
    """
    from edgekd.lm.models import load_causal_lm
    from edgekd.progress import console

    unknown = [name for name in targets if name not in LM_TARGETS]
    if unknown or not targets:
        raise UserError(f"unknown causal-LM target(s) {', '.join(unknown) or '(none)'}; "
                        f"choose from {', '.join(LM_TARGETS)}")
    if max_perplexity_ratio is not None and not max_perplexity_ratio >= 1:
        raise UserError(f"--max-perplexity-ratio {max_perplexity_ratio} is below 1, which not even "
                        "the fp32 export meets; use e.g. 1.1")
    model, tokenizer = load_causal_lm(student_dir, role="student")
    limit = min(max_length, getattr(model.config, "max_position_embeddings", max_length))
    if limit < 8:
        raise UserError(f"--max-length {max_length} is too short to generate anything; use at least 8")
    # parity prompts fit the exported maximum with room for the generated tokens
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"][:limit // 2] for p in PARITY_PROMPTS]
    parity_tokens = min(parity_tokens, limit - max(len(p) for p in prompts))
    report = console.print if show_progress else (lambda message: None)
    artifacts = []
    with atomic_dir(Path(out), overwrite=overwrite) as staging:
        reference = staging / ".fp32" / "model.onnx"
        reference.parent.mkdir()
        export_fp32(model, reference)
        expected = torch_greedy(model, tokenizer, prompts, new_tokens=parity_tokens)
        gate, searched = None, {}
        if any(LM_TARGETS[name].max_perplexity_ratio for name in targets):
            gate = _gate(model, tokenizer, reference, texts=gate_texts, source=gate_source,
                         tokens=min(GATE_TOKENS, limit))
        for name in targets:
            target = LM_TARGETS[name]  # --max-perplexity-ratio replaces the quantised targets' budgets
            budget = target.max_perplexity_ratio and (max_perplexity_ratio or target.max_perplexity_ratio)
            artifacts.append(_write_target(target, reference, staging / name, model=model,
                                           tokenizer=tokenizer, prompts=prompts, expected=expected,
                                           max_length=limit, parity_tokens=parity_tokens,
                                           gate=gate if budget else None, budget=budget, searched=searched,
                                           report=report))
        shutil.rmtree(reference.parent)
    return [LMArtifact(**{**a.__dict__, "folder": Path(out) / a.target}) for a in artifacts]


def _gate(model, tokenizer, reference: Path, *, texts: list[str] | None, source: str, tokens: int) -> Gate:
    from edgekd.lm.data import encode_texts
    from edgekd.lm.quantize import SequenceScorer

    if texts:
        ids = encode_texts(texts[:GATE_TEXTS], tokenizer, max_length=tokens).input_ids
    else:
        ids = sampled_texts(model, tokenizer, count=GATE_TEXTS // 2, tokens=tokens)
        source = f"{len(ids)} texts sampled from the fp32 student"
    return Gate(texts=ids, source=source,
                fp32_perplexity=SequenceScorer(reference, threads=torch.get_num_threads()).perplexity(ids))


@torch.no_grad()
def sampled_texts(model: torch.nn.Module, tokenizer, *, count: int, tokens: int, seed: int = 0
                  ) -> list[list[int]]:
    """`count` sequences of `tokens` ids sampled from the model (temperature 1, no top-k or
    top-p), each started from the beginning-of-text token: text in the model's own
    distribution, for a perplexity gate when the user gives no held-out text."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise UserError("the tokenizer has no beginning- or end-of-text token to sample gate text "
                        "from; give held-out text with --data")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ids = torch.full((count, 1), start, dtype=torch.long)
        output = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                top_k=0, top_p=1.0, max_new_tokens=tokens - 1, min_new_tokens=tokens - 1,
                                pad_token_id=start if tokenizer.pad_token_id is None else tokenizer.pad_token_id)
    return output.tolist()


def _write_target(target: LMTarget, reference: Path, folder: Path, *, model, tokenizer,
                  prompts: list[list[int]], expected: list[list[int]], max_length: int,
                  parity_tokens: int, gate: Gate | None, budget: float | None,
                  searched: dict, report) -> LMArtifact:
    """Write one target's folder; `searched` keeps each budget's int8 search (int8 and
    int8-ort share it)."""
    from edgekd.lm.generate import OnnxDecoder
    from edgekd.lm.quantize import SequenceScorer, search_int8

    folder.mkdir(parents=True)
    onnx_path = folder / "model.onnx"
    search = None
    if target.precision == "fp32":
        shutil.copyfile(reference, onnx_path)
    elif target.precision == "int8":  # every int8 target has a budget, so a gate
        if budget not in searched:
            result = reference.parent / f"int8-{budget:g}" / onnx_path.name
            result.parent.mkdir()
            searched[budget] = result, search_int8(
                reference, result, texts=gate.texts, budget=budget, fp32_perplexity=gate.fp32_perplexity,
                threads=torch.get_num_threads(), report=report)
        result, search = searched[budget]
        for file in result.parent.iterdir():  # model.onnx, and model.onnx.data when large
            shutil.copyfile(file, folder / file.name)
    else:
        quantize_int4(reference, onnx_path)
    perplexity = None
    if gate is not None:
        perplexity = (search.perplexity if search is not None else
                      SequenceScorer(onnx_path, threads=torch.get_num_threads()).perplexity(gate.texts))
        if perplexity > budget * gate.fp32_perplexity:
            raise GateFailed(f"target '{target.name}': perplexity {perplexity:.2f} on {gate.source} is "
                             f"{perplexity / gate.fp32_perplexity:.2f}x the fp32 export's "
                             f"({gate.fp32_perplexity:.2f}), over its budget of {budget:g}x; raise "
                             "--max-perplexity-ratio or choose int8 or fp32")
    model_file = onnx_path.name
    if target.ort_format:
        from edgekd.export.mobile import convert_to_ort

        convert_to_ort(onnx_path, folder, optimization_level="basic")
        onnx_path.unlink()
        model_file = "model.ort"
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    manifest = {"task": "causal-lm", "target": target.name, "precision": target.precision,
                "model_file": model_file, "max_length": max_length,
                "layers": model.config.num_hidden_layers, "eos_token_id": tokenizer.eos_token_id}
    (folder / "edgekd.json").write_text(json.dumps(manifest, indent=2))
    decoder = OnnxDecoder(folder, threads=1)
    produced = [decoder.greedy(ids, new_tokens=parity_tokens, stop_at_eos=False) for ids in prompts]
    agreement = _token_agreement(expected, produced)
    if target.precision == "fp32" and agreement < 1.0:
        raise UserError(f"the fp32 ONNX export generates different tokens from PyTorch "
                        f"({agreement:.0%} agree); the export is wrong, please report it")
    size = sum(path.stat().st_size for path in folder.iterdir() if path.name.startswith("model."))
    manifest["parity"] = {"greedy_agreement": agreement, "prompts": len(PARITY_PROMPTS),
                          "new_tokens": parity_tokens}
    if gate is not None:
        manifest["perplexity_gate"] = gate.describe(perplexity, budget)
    if search is not None:
        manifest["int8_search"] = search.describe()
    manifest["size_bytes"] = size
    (folder / "edgekd.json").write_text(json.dumps(manifest, indent=2))
    return LMArtifact(target=target.name, folder=folder, model_file=model_file, size_bytes=size,
                      greedy_agreement=agreement, exact=agreement == 1.0,
                      perplexity_ratio=perplexity / gate.fp32_perplexity if gate else None,
                      kept_float=len(search.kept_float) if search else 0)


def _token_agreement(expected: list[list[int]], produced: list[list[int]]) -> float:
    """Share of positions where the generated tokens agree, up to the first disagreement
    in each prompt (after one wrong token the two continuations are no longer comparable)."""
    agreed = total = 0
    for first, second in zip(expected, produced):
        total += len(first)
        for a, b in zip(first, second):
            if a != b:
                break
            agreed += 1
    return agreed / max(total, 1)


@torch.no_grad()
def torch_greedy(model: torch.nn.Module, tokenizer, prompts, *, new_tokens: int) -> list[list[int]]:
    """PyTorch's greedy continuation of each prompt (text or token ids; new tokens only, no
    early stop)."""
    results = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]
                            if isinstance(prompt, str) else list(prompt)])
        output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id or 0)
        results.append(output[0, ids.shape[1]:].tolist())
    return results
