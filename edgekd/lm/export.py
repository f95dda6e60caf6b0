"""Causal LM -> ONNX with key/value-cache inputs and outputs; int8, 4-bit and .ort variants.

The graph takes `input_ids` (batch, new), `attention_mask` (batch, past + new) and, per
layer, `past_key.<i>` / `past_value.<i>` (batch, kv_heads, past, head_dim); it returns
`logits` (batch, new, vocab) and `present_key.<i>` / `present_value.<i>` with past + new
positions. A prompt is one call with an empty cache (past = 0); each generated token is
one more call with the presents fed back. Position ids and the causal mask are computed
inside the graph from `attention_mask`, so a caller needs nothing model-specific.

Every export is generated greedily in ONNX Runtime and compared token for token with
PyTorch's greedy generation (fp32 must match exactly; a mismatch is an error).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from edgekd.errors import UserError, atomic_dir

OPSET = 17


@dataclass(frozen=True)
class LMTarget:
    """One way to ship a causal LM."""

    name: str
    precision: str  # fp32, int8 (dynamic, MatMul weights) or int4 (MatMulNBits, weight-only)
    ort_format: bool = False  # also convert to ONNX Runtime Mobile's .ort
    description: str = ""


LM_TARGETS = {
    "fp32": LMTarget("fp32", "fp32", description="reference export; greedy tokens equal PyTorch's"),
    "int8": LMTarget("int8", "int8", description="dynamic int8 MatMul weights and activations"),
    "int4": LMTarget("int4", "int4", description="4-bit weight-only MatMulNBits, block 32, fp32 compute"),
    "int8-ort": LMTarget("int8-ort", "int8", ort_format=True, description="int8 as .ort for ORT Mobile"),
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


def quantize_int8(source: Path, destination: Path) -> None:
    """Dynamic int8 on MatMul weights (per channel); activations quantised at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(destination), op_types_to_quantize=["MatMul"],
                     per_channel=True, weight_type=QuantType.QInt8)


def quantize_int4(source: Path, destination: Path) -> None:
    """4-bit weight-only MatMulNBits, symmetric blocks of 32; accuracy level 4 lets the CPU
    kernel multiply in int8, the fast path on x86 and ARM."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

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


PARITY_PROMPTS = ("The government said on Monday that", "Shares in the company",
                  "The film, which stars")


def export_lm(student_dir: Path, *, targets: list[str], out: Path, overwrite: bool = False,
              max_length: int = 512, parity_tokens: int = 16) -> list[LMArtifact]:
    """Export the causal LM in `student_dir` to `out/<target>/` for each target, each checked."""
    from edgekd.lm.models import load_causal_lm

    unknown = [name for name in targets if name not in LM_TARGETS]
    if unknown or not targets:
        raise UserError(f"unknown causal-LM target(s) {', '.join(unknown) or '(none)'}; "
                        f"choose from {', '.join(LM_TARGETS)}")
    model, tokenizer = load_causal_lm(student_dir, role="student")
    limit = min(max_length, getattr(model.config, "max_position_embeddings", max_length))
    if limit < 8:
        raise UserError(f"--max-length {max_length} is too short to generate anything; use at least 8")
    # parity prompts fit the exported maximum with room for the generated tokens
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"][:limit // 2] for p in PARITY_PROMPTS]
    parity_tokens = min(parity_tokens, limit - max(len(p) for p in prompts))
    artifacts = []
    with atomic_dir(Path(out), overwrite=overwrite) as staging:
        reference = staging / ".fp32" / "model.onnx"
        reference.parent.mkdir()
        export_fp32(model, reference)
        expected = torch_greedy(model, tokenizer, prompts, new_tokens=parity_tokens)
        for name in targets:
            artifacts.append(_write_target(LM_TARGETS[name], reference, staging / name, model=model,
                                           tokenizer=tokenizer, prompts=prompts, expected=expected,
                                           max_length=limit, parity_tokens=parity_tokens))
        shutil.rmtree(reference.parent)
    return [LMArtifact(**{**a.__dict__, "folder": Path(out) / a.target}) for a in artifacts]


def _write_target(target: LMTarget, reference: Path, folder: Path, *, model, tokenizer,
                  prompts: list[list[int]], expected: list[list[int]], max_length: int,
                  parity_tokens: int) -> LMArtifact:
    from edgekd.lm.generate import OnnxDecoder

    folder.mkdir(parents=True)
    onnx_path = folder / "model.onnx"
    {"fp32": lambda: shutil.copyfile(reference, onnx_path),
     "int8": lambda: quantize_int8(reference, onnx_path),
     "int4": lambda: quantize_int4(reference, onnx_path)}[target.precision]()
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
    manifest["size_bytes"] = size
    (folder / "edgekd.json").write_text(json.dumps(manifest, indent=2))
    return LMArtifact(target=target.name, folder=folder, model_file=model_file, size_bytes=size,
                      greedy_agreement=agreement, exact=agreement == 1.0)


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
