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

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgekd.errors import GateFailed, UserError, first_line
from edgekd.exporting.artifact import (Artifact, Built, converter_failures, refuse_programs_with_strings, ship_onnx,
                                       write_target)
from edgekd.targets import GGUF_PRECISIONS, Target
from edgekd.tasks import CAUSAL_LM

OPSET = 17
GATE_TEXTS = 16  # texts the perplexity budget is measured on
GATE_TOKENS = 128  # tokens per gate text


class DecoderWithCache(torch.nn.Module):
    """A flat-tensor interface around a Hugging Face causal LM, for tracing."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.layers = model.config.num_hidden_layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        config = self.model.config
        window = getattr(config, "sliding_window", None)
        sliding = window and "sliding_attention" in (getattr(config, "layer_types", None) or ())
        # Every layer keeps its whole cache (one graph interface); a sliding layer's window is its mask.
        cache = DynamicCache() if sliding else DynamicCache(config=config)
        for layer in range(self.layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        new = input_ids.shape[1]
        # positions count real tokens only, so left padding in a batch is harmless
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -new:]
        mask = causal_mask(attention_mask, new)
        if sliding:
            mask = {"full_attention": mask, "sliding_attention": causal_mask(attention_mask, new, window=window)}
        output = self.model(input_ids=input_ids, attention_mask=mask,
                            position_ids=position_ids, past_key_values=cache, use_cache=True)
        presents = []
        for layer in range(self.layers):
            presents += [output.past_key_values.layers[layer].keys,
                         output.past_key_values.layers[layer].values]
        return (output.logits, *presents)


def causal_mask(attention_mask: torch.Tensor, new: int, *, window: int | None = None) -> torch.Tensor:
    """(batch, 1, new, total) additive float mask: a query sees earlier real tokens only (with
    `window`, only the last `window` of them, as a sliding-attention layer does)."""
    total = attention_mask.shape[1]
    key_positions = torch.arange(total, device=attention_mask.device)
    query_positions = key_positions[total - new:]
    allowed = (key_positions[None, :] <= query_positions[:, None])[None, None]
    if window:
        allowed = allowed & (query_positions[:, None] - key_positions[None, :] < window)[None, None]
    allowed = allowed & attention_mask[:, None, None, :].bool()
    return torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)


def cache_shape(config) -> tuple[int, int]:
    """(kv_heads, head_dim) of each layer's cache."""
    from edgekd.models import head_size

    try:
        heads = getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", None)
        size = head_size(config) if heads else None
    except Exception as error:  # noqa: BLE001 - Gemma 4 refuses to give one head size for every layer
        raise UserError(f"a {config.model_type} model's layers differ in shape ({first_line(error)[:120]}); edgekd "
                        "exports decoders whose layers share one key/value cache shape") from error
    if not heads:
        raise UserError(f"a {config.model_type} model keeps no key/value cache (it has no attention heads, as "
                        "state-space models do); edgekd exports decoders with attention")
    return heads, size


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
        raise UserError(f"cannot export {type(model).__name__} to ONNX: {first_line(error)[:200]}") from error


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


def export_lm(student_dir: Path, *, targets: list[Target], out: Path, overwrite: bool = False,
              max_length: int = 512, parity_tokens: int = 16, gate_texts: list[str] | None = None,
              gate_source: str = "held-out text", max_perplexity_ratio: float | None = None,
              show_progress: bool = True, with_tokenizer: bool = False) -> list[Artifact]:
    """Export the causal LM in `student_dir` to `out/<target>/` for each target, each checked
    and each written atomically.

    Quantised targets are held to `max_perplexity_ratio` (default: each target's own
    budgets.max_perplexity_ratio) on `gate_texts`; without them, on text sampled from the
    student itself. `with_tokenizer` also writes, beside each ONNX/.ort model, the prompt
    encoder (edgekd/lm/prompt_encoder.py), its ids checked against the Python tokenizer.
    """
    from edgekd.lm.models import load_causal_lm
    from edgekd.progress import console

    if max_perplexity_ratio is not None and not max_perplexity_ratio >= 1:
        raise UserError(f"--max-perplexity-ratio {max_perplexity_ratio} is below 1, which not even "
                        "the fp32 export meets; use e.g. 1.1")
    from edgekd.lm.pte import PTE_LM_PRECISIONS

    for target in targets:
        allowed = {"pte": PTE_LM_PRECISIONS, "gguf": GGUF_PRECISIONS}.get(target.format, LM_PRECISIONS)
        if target.precision not in allowed or target.format not in ("onnx", "ort", "pte", "gguf"):
            raise UserError(f"target '{target.name}' ({target.format} {target.precision}) cannot be built "
                            f"for a causal LM; choose a target of {', '.join(LM_PRECISIONS)} precision "
                            f"(.pte: {', '.join(PTE_LM_PRECISIONS)}; .gguf: {', '.join(GGUF_PRECISIONS)})")
    if with_tokenizer:
        refuse_programs_with_strings(targets)
    model, tokenizer = load_causal_lm(student_dir, role="student")
    if any(target.format == "gguf" for target in targets):  # a model or tokenizer a .gguf cannot hold: before any work
        from edgekd.lm.gguf import check_writable

        check_writable(model, tokenizer)
    encoder = None
    if with_tokenizer:  # refused before any export work when the operator has no exact algorithm
        from edgekd.lm.prompt_encoder import build_encoder

        encoder = build_encoder(tokenizer)  # (model, characters flagged by the census)
    limit = min(max_length, getattr(model.config, "max_position_embeddings", max_length))
    if limit < 8:
        raise UserError(f"--max-length {max_length} is too short to generate anything; use at least 8")
    # parity prompts fit the exported maximum with room for the generated tokens
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"][:limit // 2] for p in PARITY_PROMPTS]
    parity_tokens = min(parity_tokens, limit - max(len(p) for p in prompts))
    report = console.print if show_progress else (lambda message: None)
    with tempfile.TemporaryDirectory(prefix="edgekd-export-") as scratch:
        reference = Path(scratch) / "fp32" / "model.onnx"
        reference.parent.mkdir()
        export_fp32(model, reference)
        context = _LMContext(student_dir=Path(student_dir), model=model, tokenizer=tokenizer, reference=reference,
                             scratch=Path(scratch), prompts=prompts, max_length=limit, parity_tokens=parity_tokens,
                             expected=torch_greedy(model, tokenizer, prompts, new_tokens=parity_tokens),
                             report=report, encoder=encoder, encoder_texts=list(gate_texts or ())[:GATE_TEXTS],
                             encoder_source=gate_source if gate_texts else "no --data given")
        budgets = {target.name: _budget(target, max_perplexity_ratio) for target in targets}
        if any(budgets.values()):
            gated = ", ".join(name for name, budget in budgets.items() if budget)
            with converter_failures(model, "in ONNX Runtime (its fp32 graph scores the perplexity gate)", target=gated):
                context.gate = _gate(model, tokenizer, reference, texts=gate_texts, source=gate_source,
                                     tokens=min(GATE_TOKENS, limit))
        return [_export_target(target, context, Path(out), budget=budgets[target.name], overwrite=overwrite)
                for target in targets]


LM_PRECISIONS = ("fp32", "int8-dynamic", "int4")


def _budget(target: Target, override: float | None) -> float | None:
    """The perplexity budget of a quantised target (--max-perplexity-ratio replaces the
    target's own); None for fp32, which is checked token for token instead."""
    if target.precision == "fp32":
        return None
    return override or target.budgets.max_perplexity_ratio


@dataclass
class _LMContext:
    """What every target of one causal-LM export shares."""

    student_dir: Path
    model: torch.nn.Module
    tokenizer: object
    reference: Path  # the fp32 export
    scratch: Path
    prompts: list[list[int]]
    expected: list[list[int]]  # PyTorch's greedy tokens after each prompt
    max_length: int
    parity_tokens: int
    report: object
    gate: Gate | None = None
    searched: dict = field(default_factory=dict)  # budget -> (int8 file, search): shared by int8 targets
    encoder: tuple | None = None  # the prompt encoder (onnx.ModelProto, flagged characters), --with-tokenizer
    encoder_texts: list = field(default_factory=list)
    encoder_source: str = ""
    encoder_checks: dict | None = None  # its token parity, checked once for every target


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


def _export_target(target: Target, context: _LMContext, out: Path, *, budget: float | None,
                   overwrite: bool) -> Artifact:
    """Build and check one target's folder (.onnx, .ort or .pte), written the way every task
    writes one (edgekd/exporting/artifact.py: atomically, size budget, config, tokenizer,
    manifest): its greedy tokens against PyTorch's (fp32 must match them all) and, quantised,
    its perplexity budget."""
    from edgekd.lm.quantize import perplexity_of

    def build(staging: Path) -> Built:
        details = {"max_length": context.max_length, "layers": context.model.config.num_hidden_layers,
                   "eos_token_id": context.tokenizer.eos_token_id}
        make = {"pte": _pte_program, "gguf": _gguf_file}.get(target.format, _onnx_graph)
        made = make(target, context, staging, details, budget=budget)
        produced = [made.decoder.greedy(ids, new_tokens=context.parity_tokens, stop_at_eos=False)
                    for ids in context.prompts]
        agreement = _token_agreement(context.expected, produced)
        if target.precision == "fp32" and agreement < 1.0:
            raise UserError(f"the fp32 {made.kind} generates different tokens from PyTorch ({agreement:.0%} agree); "
                            "the export is wrong, please report it")
        if made.same_precision_tokens is not None:  # the same quantised model's greedy tokens in PyTorch
            details["greedy_agreement_with_pytorch_same_precision"] = _token_agreement(made.same_precision_tokens,
                                                                                       produced)
        if target.precision != "fp32":
            details["quantization"] = made.quantization
        ratio = None
        if budget is not None:
            perplexity = (made.perplexity if made.perplexity is not None
                          else perplexity_of(made.decoder.all_logits, context.gate.texts))
            _check_perplexity(target, perplexity, context.gate, budget)
            details["perplexity_gate"] = context.gate.describe(perplexity, budget)
            ratio = perplexity / context.gate.fp32_perplexity
        return Built(model_file=made.model_file, inputs=made.inputs, outputs=made.outputs,
                     parity={"greedy_agreement": agreement, "prompts": len(context.prompts),
                             "new_tokens": context.parity_tokens, "exact": agreement == 1.0},
                     details=details, weight_files=made.weight_files,
                     checks={"greedy_agreement": agreement, "nodes_kept_float": made.kept_float,
                             "perplexity_ratio": ratio})

    return write_target(target, out, task=CAUSAL_LM.name, student_dir=context.student_dir, model=context.model,
                        tokenizer=context.tokenizer, overwrite=overwrite, build=build)


@dataclass(frozen=True)
class _Made:
    """A target's model file in the folder, and how to run it for the checks."""

    kind: str  # what it is, for messages: "ONNX export", ".pte"
    model_file: str
    decoder: object  # edgekd.lm.generate.Decoder over the folder being written
    inputs: dict
    outputs: dict
    quantization: dict | None = None  # what a quantised target is made of
    perplexity: float | None = None  # on the gate text, when building it measured it already
    weight_files: tuple[str, ...] = ()
    kept_float: tuple[str, ...] = ()  # MatMuls an int8 search kept float
    same_precision_tokens: list | None = None  # greedy tokens of the same quantised model in PyTorch


def _onnx_graph(target: Target, context: _LMContext, staging: Path, details: dict, *, budget: float | None) -> _Made:
    """The key/value-cache graph at the target's precision (.onnx, or .ort), its perplexity gate
    measured before it is shipped; the prompt encoder beside it with --with-tokenizer."""
    from edgekd.lm.generate import OnnxDecoder
    from edgekd.lm.quantize import SequenceScorer

    onnx_path = context.scratch / target.name / "model.onnx"
    onnx_path.parent.mkdir()
    search = _build(target, context, onnx_path, budget=budget)
    perplexity = None
    if budget is not None:  # fails before the graph is shipped and generated with
        perplexity = (search.perplexity if search is not None else
                      SequenceScorer(onnx_path, threads=torch.get_num_threads()).perplexity(context.gate.texts))
        _check_perplexity(target, perplexity, context.gate, budget)
    model_path, weight_files = ship_onnx(target, onnx_path, staging, details)
    decoder = OnnxDecoder(staging, threads=1, manifest={"task": CAUSAL_LM.name, "model_file": model_path.name,
                                                        **details})
    if search is not None:
        details["int8_search"] = search.describe()
    if context.encoder is not None:
        details["prompt_encoder"] = _prompt_encoder(target, context, staging)
    inputs, outputs = io_names(context.model.config.num_hidden_layers)
    return _Made(kind="ONNX export", model_file=model_path.name, decoder=decoder,
                 inputs={name: AXES.get(name, ["batch", "kv_heads", "past", "head_dim"]) for name in inputs},
                 outputs={name: AXES.get(name, ["batch", "kv_heads", "total", "head_dim"]) for name in outputs},
                 quantization=QUANTIZATION_SCHEMES.get(target.precision), perplexity=perplexity,
                 weight_files=weight_files, kept_float=tuple(search.kept_float) if search else ())


def _pte_program(target: Target, context: _LMContext, staging: Path, details: dict, *, budget: float | None) -> _Made:
    """The static-cache program (edgekd/lm/pte.py); quantised, also compared with the same
    quantised model in PyTorch (what the program should reproduce)."""
    from edgekd.lm.generate import PteDecoder
    from edgekd.lm.pte import SCHEME_8DA4W, export_lm_pte, prepared_model

    context.report(f"{target.name}: torch.export with a static cache of {context.max_length} positions, "
                   f"{target.precision}, lowered to XNNPACK")
    prepared = prepared_model(context.model, precision=target.precision, max_length=context.max_length)
    details.update(delegation=export_lm_pte(prepared, staging / "model.pte", max_length=context.max_length),
                   cache="static, inside the program: call it with one token and its position")
    decoder = PteDecoder(staging, manifest={"task": CAUSAL_LM.name, "format": "pte", "model_file": "model.pte",
                                            **details})
    same = (None if target.precision == "fp32" else
            torch_greedy(prepared, context.tokenizer, context.prompts, new_tokens=context.parity_tokens))
    return _Made(kind=".pte", model_file="model.pte", decoder=decoder,
                 inputs={"input_ids": ["1", "1"], "cache_position": ["1"]}, outputs={"logits": ["1", "1", "vocab"]},
                 quantization=SCHEME_8DA4W, same_precision_tokens=same)


GGUF_SCHEMES = {"q8_0": "Q8_0: blocks of 32 weights, one f16 scale each",
                "q4_k_m": "Q4_K_M: llama.cpp's 4-bit K-quant mix (super-blocks of 256 weights; its quantiser "
                          "gives some tensors more bits, and rows not a multiple of 256 a simpler type)"}


def _gguf_file(target: Target, context: _LMContext, staging: Path, details: dict, *, budget: float | None) -> _Made:
    """The model, its hyper-parameters and tokenizer in one .gguf file for llama.cpp
    (edgekd/lm/gguf.py). f16 is read back with transformers' GGUF reader for the checks; a
    quantised file is run by llama.cpp itself when it is installed (its own kernels score the
    perplexity gate), else read back too."""
    from edgekd.lm.generate import GgufDecoder, LlamaCppDecoder
    from edgekd.lm.gguf import llama_cpp_installed, write_gguf

    context.report(f"{target.name}: GGUF {target.precision} with the tokenizer inside, for llama.cpp")
    details.update(gguf=write_gguf(context.model, context.tokenizer, staging / "model.gguf",
                                   precision=target.precision),
                   run_with="llama.cpp: llama-cli -m model.gguf, or any app built on it")
    kind = LlamaCppDecoder if target.precision != "fp16" and llama_cpp_installed() else GgufDecoder
    decoder = kind(staging, manifest={"task": CAUSAL_LM.name, "format": "gguf", "model_file": "model.gguf", **details})
    details["checked_with"] = "llama.cpp" if kind is LlamaCppDecoder else "transformers' GGUF reader"
    return _Made(kind="GGUF file", model_file="model.gguf", decoder=decoder, inputs={}, outputs={},
                 quantization={"scheme": GGUF_SCHEMES[target.precision]} if target.precision in GGUF_SCHEMES else None)


def _prompt_encoder(target: Target, context: _LMContext, staging: Path) -> dict:
    """The prompt encoder beside the model; its ids checked on the first target, the same
    file's session opened for each (an .ort target gets its own conversion)."""
    from edgekd.exporting.tokenizer_graph import write_string_model
    from edgekd.lm import prompt_encoder as encoder

    model, flagged = context.encoder
    path, session, details = write_string_model(
        model, staging, files=(encoder.MODEL_FILE, encoder.ORT_MODEL_FILE, encoder.REQUIRED_OPERATORS_FILE),
        mobile=target.format == "ort", scratch=context.scratch / f"{target.name}-encoder",
        optimization_level="basic")
    if context.encoder_checks is None or target.format == "ort":
        context.encoder_checks = encoder.check_encoder(session, context.tokenizer, texts=context.encoder_texts,
                                                       source=context.encoder_source)
    return encoder.encoder_record(path, context.encoder_checks, flagged_characters=flagged, **details)


AXES = {"input_ids": ["batch", "new"], "attention_mask": ["batch", "total"], "logits": ["batch", "new", "vocab"]}
# What a causal LM's quantised targets are made of (the target's quantization section
# describes the encoder quantiser; a causal LM's int8 is searched against perplexity).
QUANTIZATION_SCHEMES = {
    "int8-dynamic": {"weights": "int8 per output channel, symmetric", "activations": "uint8 per tensor at run time",
                     "smoothing": "activation outliers moved into the weights where exact",
                     "kept_float": "the worst-quantising MatMuls, until the perplexity budget holds"},
    "int4": {"weights": "4-bit MatMulNBits, symmetric blocks of 32", "activations": "float (int8 kernel, level 4)"}}


def _build(target: Target, context: _LMContext, destination: Path, *, budget: float | None):
    """Write the target's precision of the model to `destination`; the int8 search, if any."""
    from edgekd.exporting.quantize import build_precision
    from edgekd.lm.quantize import search_int8

    def int8(source: Path, destination: Path):
        if budget not in context.searched:  # int8 targets of one budget share one search
            result = context.scratch / f"int8-{budget:g}" / destination.name
            result.parent.mkdir()
            context.searched[budget] = result, search_int8(
                source, result, texts=context.gate.texts, budget=budget, fp32_perplexity=context.gate.fp32_perplexity,
                threads=torch.get_num_threads(), report=context.report)
        result, search = context.searched[budget]
        for file in result.parent.iterdir():  # model.onnx, and model.onnx.data when large
            shutil.copyfile(file, destination.parent / file.name)
        return search

    return build_precision(target.precision, context.reference, destination, int8=int8)


def _check_perplexity(target: Target, perplexity: float, gate: Gate, budget: float) -> None:
    if perplexity > budget * gate.fp32_perplexity:
        raise GateFailed(f"target '{target.name}': perplexity {perplexity:.2f} on {gate.source} is "
                         f"{perplexity / gate.fp32_perplexity:.2f}x the fp32 export's "
                         f"({gate.fp32_perplexity:.2f}), over its budget of {budget:g}x; raise "
                         "--max-perplexity-ratio or choose onnx-int8 or onnx-fp32")


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
