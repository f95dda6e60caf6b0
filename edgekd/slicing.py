"""Students sliced from the teacher's width: hidden channels, attention heads and FFN neurons.

What to keep is ranked by activation importance on a sample of the training text, as in
Minitron: a hidden channel by its mean magnitude in the residual stream over every layer
(one shared index for the embeddings, every norm and every linear), a head by the mean norm
of its output before the attention's output projection, an FFN neuron by its mean magnitude
before the down projection. Padding positions do not count. Decoders with grouped key/value
heads keep whole groups (ranked by the summed importance of their query heads) and the best
query heads inside each kept group, so the student's heads map onto its key/value heads as
the teacher's did. MPNet keeps the same heads in every layer (ranked by their importance summed
over the layers), since its relative-position bias is one table of heads that every layer
adds to its attention scores. A head keeps its size: the student is a stock configuration of the
teacher's own class with fewer channels, heads and neurons, which transformers loads without
edgekd and every target exports unchanged.

Each architecture family is a table of parameter-name patterns saying which dimension of a
weight is the hidden size, the attention's inner size (heads or key/value heads) or the FFN
width; a parameter whose shape changes and that no pattern names is refused by name, never
guessed.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch
from torch import nn

from edgekd.errors import UserError
from edgekd.models import (_intermediate_name, ffn_width, find_layer_list, follow_hidden, head_size, model_inputs,
                           student_from_config, student_maker)

HIDDEN, HEADS, KV, FFN = "hidden", "heads", "kv", "ffn"
HEAD_IDS = "head ids"  # a dimension of whole heads (not their channels) shared by every layer


@dataclass(frozen=True)
class Family:
    """Where one architecture family keeps its widths."""

    rules: tuple[tuple[str, tuple[str | None, ...]], ...]  # parameter-name pattern -> role of each dimension
    attention_output: str  # pattern of the module whose input is every head's output side by side
    ffn_output: str  # pattern of the module whose input is the FFN's neurons
    grouped_kv: bool  # key/value heads are their own count (decoders)
    inner_is_hidden: bool  # the attention's inner size is the hidden size (BERT's configs)
    shared_heads: bool = False  # every layer keeps the same heads (a per-head table all layers share)


_BERT_RULES = (
    (r"embeddings\.(word|position|token_type)_embeddings\.weight$", (None, HIDDEN)),
    (r"embeddings\.LayerNorm\.(weight|bias)$", (HIDDEN,)),
    (r"attention\.self\.(query|key|value)\.weight$", (HEADS, HIDDEN)),
    (r"attention\.self\.(query|key|value)\.bias$", (HEADS,)),
    (r"attention\.output\.dense\.weight$", (HIDDEN, HEADS)),
    (r"attention\.output\.dense\.bias$", (HIDDEN,)),
    (r"LayerNorm\.(weight|bias)$", (HIDDEN,)),
    (r"intermediate\.dense\.weight$", (FFN, HIDDEN)),
    (r"intermediate\.dense\.bias$", (FFN,)),
    (r"\d+\.output\.dense\.weight$", (HIDDEN, FFN)),
    (r"\d+\.output\.dense\.bias$", (HIDDEN,)),
    (r"(pooler|classifier)\.dense\.weight$", (HIDDEN, HIDDEN)),
    (r"(pooler|classifier)\.dense\.bias$", (HIDDEN,)),
    (r"classifier(\.out_proj)?\.weight$", (None, HIDDEN)),
)
_DISTILBERT_RULES = (
    (r"embeddings\.(word|position)_embeddings\.weight$", (None, HIDDEN)),
    (r"(LayerNorm|sa_layer_norm|output_layer_norm)\.(weight|bias)$", (HIDDEN,)),
    (r"attention\.(q_lin|k_lin|v_lin)\.weight$", (HEADS, HIDDEN)),
    (r"attention\.(q_lin|k_lin|v_lin)\.bias$", (HEADS,)),
    (r"attention\.out_lin\.weight$", (HIDDEN, HEADS)),
    (r"attention\.out_lin\.bias$", (HIDDEN,)),
    (r"ffn\.lin1\.weight$", (FFN, HIDDEN)),
    (r"ffn\.lin1\.bias$", (FFN,)),
    (r"ffn\.lin2\.weight$", (HIDDEN, FFN)),
    (r"ffn\.lin2\.bias$", (HIDDEN,)),
    (r"pre_classifier\.weight$", (HIDDEN, HIDDEN)),
    (r"pre_classifier\.bias$", (HIDDEN,)),
    (r"classifier\.weight$", (None, HIDDEN)),
)
_MPNET_RULES = (
    (r"attention\.attn\.(q|k|v)\.weight$", (HEADS, HIDDEN)),
    (r"attention\.attn\.(q|k|v)\.bias$", (HEADS,)),
    (r"attention\.attn\.o\.weight$", (HIDDEN, HEADS)),
    (r"attention\.attn\.o\.bias$", (HIDDEN,)),
    (r"encoder\.relative_attention_bias\.weight$", (None, HEAD_IDS)),  # (buckets, heads), one for all layers
    *_BERT_RULES,
)
_LLAMA_RULES = (
    (r"embed_tokens\.weight$", (None, HIDDEN)),
    (r"(lm_head|score)\.weight$", (None, HIDDEN)),
    (r"(input_layernorm|post_attention_layernorm|model\.norm)\.weight$", (HIDDEN,)),
    (r"self_attn\.q_proj\.weight$", (HEADS, HIDDEN)),
    (r"self_attn\.q_proj\.bias$", (HEADS,)),
    (r"self_attn\.(k_proj|v_proj)\.weight$", (KV, HIDDEN)),
    (r"self_attn\.(k_proj|v_proj)\.bias$", (KV,)),
    (r"self_attn\.o_proj\.weight$", (HIDDEN, HEADS)),
    (r"mlp\.(gate_proj|up_proj)\.weight$", (FFN, HIDDEN)),
    (r"mlp\.down_proj\.weight$", (HIDDEN, FFN)),
)
_VIT_RULES = (  # ViT: patch embedding and class token instead of token embeddings, pre-norm blocks
    (r"embeddings\.(cls_token|position_embeddings|mask_token)$", (None, None, HIDDEN)),
    (r"embeddings\.patch_embeddings\.projection\.weight$", (HIDDEN, None, None, None)),
    (r"embeddings\.patch_embeddings\.projection\.bias$", (HIDDEN,)),
    (r"attention\.(q|k|v)_proj\.weight$", (HEADS, HIDDEN)),
    (r"attention\.(q|k|v)_proj\.bias$", (HEADS,)),
    (r"attention\.o_proj\.weight$", (HIDDEN, HEADS)),
    (r"attention\.o_proj\.bias$", (HIDDEN,)),
    (r"layernorm(_before|_after)?\.(weight|bias)$", (HIDDEN,)),
    (r"mlp\.fc1\.weight$", (FFN, HIDDEN)),
    (r"mlp\.fc1\.bias$", (FFN,)),
    (r"mlp\.fc2\.weight$", (HIDDEN, FFN)),
    (r"mlp\.fc2\.bias$", (HIDDEN,)),
    (r"pooler\.dense\.weight$", (HIDDEN, HIDDEN)),
    (r"pooler\.dense\.bias$", (HIDDEN,)),
    (r"classifier\.weight$", (None, HIDDEN)),
)
BERT = Family(_BERT_RULES, r"attention\.output\.dense$", r"\d+\.output\.dense$", grouped_kv=False, inner_is_hidden=True)
DISTILBERT = Family(_DISTILBERT_RULES, r"attention\.out_lin$", r"ffn\.lin2$", grouped_kv=False, inner_is_hidden=True)
MPNET = Family(_MPNET_RULES, r"attention\.attn\.o$", r"\d+\.output\.dense$", grouped_kv=False,
               inner_is_hidden=True, shared_heads=True)
LLAMA = Family(_LLAMA_RULES, r"self_attn\.o_proj$", r"mlp\.down_proj$", grouped_kv=True, inner_is_hidden=False)
VIT = Family(_VIT_RULES, r"attention\.o_proj$", r"mlp\.fc2$", grouped_kv=False, inner_is_hidden=True)
FAMILIES = {"bert": BERT, "roberta": BERT, "xlm-roberta": BERT, "camembert": BERT, "electra": BERT,
            "distilbert": DISTILBERT, "mpnet": MPNET, "llama": LLAMA, "qwen2": LLAMA, "mistral": LLAMA, "vit": VIT}


def family_of(model: nn.Module) -> Family | None:
    """The model's family, or None when edgekd cannot slice its width."""
    config = model.config
    family = FAMILIES.get(getattr(config, "model_type", None))
    if family is BERT and getattr(config, "embedding_size", config.hidden_size) != config.hidden_size:
        return None  # ELECTRA's factorised embeddings: a projection this table does not name
    return family


@dataclass(frozen=True)
class Shape:
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    head_dim: int


def student_shape(model: nn.Module, family: Family, values: dict[str, int]) -> Shape:
    """The shape `--student-config` asks for, completed from the model (heads keep their size)."""
    config = model.config
    head_dim, heads, hidden = head_size(config), config.num_attention_heads, config.hidden_size
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    intermediate = values.get("intermediate", _intermediate(config))
    if family.inner_is_hidden:  # hidden = heads x head size: one decides the other
        wanted_hidden = values.get("hidden", values.get("heads", heads) * head_dim)
        wanted_heads = values.get("heads", wanted_hidden // head_dim)
        if wanted_hidden % head_dim:
            raise UserError(f"--student-config hidden={wanted_hidden} is not a multiple of the teacher's head size "
                            f"({head_dim}): a sliced student keeps whole heads; choose a multiple, or pass "
                            "--student-init random")
        if wanted_hidden != wanted_heads * head_dim:
            raise UserError(f"--student-config: a sliced student keeps the teacher's head size ({head_dim}), so "
                            f"hidden={wanted_hidden} needs heads={wanted_hidden // head_dim}; or pass "
                            "--student-init random")
        shape = Shape(wanted_hidden, wanted_heads, wanted_heads, intermediate, head_dim)
    else:
        wanted_heads = values.get("heads", heads)
        per_group = heads // kv_heads
        if wanted_heads % per_group:
            raise UserError(f"--student-config: heads={wanted_heads} must be a multiple of {per_group}, the query "
                            f"heads that share each key/value head in the teacher; or pass --student-init random")
        shape = Shape(values.get("hidden", hidden), wanted_heads, wanted_heads // per_group, intermediate, head_dim)
    limits = {"hidden": (shape.hidden, hidden), "heads": (shape.heads, heads),
              "intermediate": (shape.intermediate, _intermediate(config))}
    for key, (value, most) in limits.items():
        if value > most:
            raise UserError(f"--student-config {key}={value} is wider than the teacher's {most}; a sliced student "
                            "keeps a subset: choose at most that, or pass --student-init random")
    return shape


def _intermediate(config) -> int:
    width = ffn_width(config)
    if width is None:
        raise UserError(f"cannot find the feed-forward width of a {type(config).__name__}; pass --student-init random")
    return width


# ---------------------------------------------------------------------------- importance

@dataclass
class Importance:
    hidden: torch.Tensor  # (hidden,)
    heads: dict[int, torch.Tensor]  # layer -> (heads,)
    ffn: dict[int, torch.Tensor]  # layer -> (intermediate,)


def _layer_of(name: str, prefix: str) -> int | None:
    match = re.match(rf"{re.escape(prefix)}\.(\d+)\.", name + ".")
    return int(match.group(1)) if match else None


@torch.no_grad()
def importance(model: nn.Module, family: Family, batches: list[dict[str, torch.Tensor]]) -> Importance:
    """Mean activation magnitudes over the real (unpadded) tokens of `batches` (every patch
    token of a batch of pixels, which has no attention mask)."""
    prefix, layer_list = find_layer_list(model)
    heads_count, head_dim = model.config.num_attention_heads, head_size(model.config)
    sums = Importance(hidden=torch.zeros(model.config.hidden_size), heads={}, ffn={})
    tokens, mask = 0, None

    def recorder(layer: int, kind: str):
        def hook(module, inputs):
            x = _real_tokens(inputs[0], mask).float()  # (tokens, width)
            if kind == HEADS:
                value = x.view(len(x), heads_count, head_dim).norm(dim=-1).sum(0)
                sums.heads[layer] = sums.heads.get(layer, 0) + value
            else:
                sums.ffn[layer] = sums.ffn.get(layer, 0) + x.abs().sum(0)
        return hook

    handles = []
    for name, module in model.named_modules():
        layer = _layer_of(name, prefix)
        for pattern, kind in ((family.attention_output, HEADS), (family.ffn_output, FFN)):
            if layer is not None and re.search(pattern, name):
                handles.append(module.register_forward_pre_hook(recorder(layer, kind)))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            mask = batch["attention_mask"].bool() if "attention_mask" in batch else None
            outputs = model(**model_inputs(model, batch), output_hidden_states=True)  # DistilBERT: no token types
            for states in outputs.hidden_states:
                sums.hidden += _real_tokens(states, mask).float().abs().sum(0)
            tokens += len(_real_tokens(outputs.hidden_states[0], mask))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    layers = list(range(len(layer_list)))
    if sorted(sums.heads) != layers or sorted(sums.ffn) != layers:
        raise UserError(f"cannot find every layer's attention output and FFN in {type(model).__name__}; "
                        "pass --student-init random")
    return Importance(hidden=sums.hidden / tokens, heads={k: v / tokens for k, v in sums.heads.items()},
                      ffn={k: v / tokens for k, v in sums.ffn.items()})


def _real_tokens(states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(tokens, width): the unpadded positions of (batch, positions, width) states; every
    position where there is no mask (patch tokens)."""
    return states[mask] if mask is not None else states.flatten(0, -2)


def _top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The indices of the `count` largest scores, in their original order (ties: lower index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))[:count]
    return torch.tensor(sorted(order), dtype=torch.long)


def _units(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Head indices -> the indices of their channels in the attention's inner dimension."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def kept_indices(model: nn.Module, shape: Shape, found: Importance, *, shared_heads: bool = False) -> dict:
    """What the student keeps: the hidden channels, and per layer the inner-attention
    channels of its query heads and of its key/value heads, and its FFN neurons; with
    `shared_heads`, the same heads in every layer (and their ids)."""
    if shared_heads:
        total = sum(found.heads.values())
        found = Importance(found.hidden, {layer: total for layer in found.heads}, found.ffn)
    config = model.config
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    per_group, kept_per_group = heads // kv_heads, shape.heads // shape.kv_heads
    indices = {HIDDEN: _top(found.hidden, shape.hidden), HEADS: {}, KV: {}, FFN: {}}
    for layer, scores in found.heads.items():
        groups = scores.view(kv_heads, per_group)
        kept_groups = _top(groups.sum(1), shape.kv_heads)
        query_heads = torch.cat([group * per_group + _top(groups[group], kept_per_group) for group in kept_groups])
        indices[HEADS][layer] = _units(query_heads, shape.head_dim)
        indices[KV][layer] = _units(kept_groups, shape.head_dim)
        indices[FFN][layer] = _top(found.ffn[layer], shape.intermediate)
    if shared_heads:
        indices[HEAD_IDS] = query_heads  # every layer's, the same
    return indices


# ---------------------------------------------------------------------------- the student

def sliced_student(model: nn.Module, values: dict[str, int], batches: list[dict[str, torch.Tensor]]) -> nn.Module:
    """A student of `model`'s own class and every layer of it, `values` (hidden, heads,
    intermediate) wide, its weights the most important slices of `model`'s on `batches`
    (model inputs with their attention mask)."""
    family = family_of(model)
    if family is None:
        raise UserError(f"edgekd cannot slice the width of a {type(model).__name__} yet (it slices "
                        f"{', '.join(sorted(FAMILIES))}); pass --student-init random")
    shape = student_shape(model, family, values)
    indices = kept_indices(model, shape, importance(model, family, batches), shared_heads=family.shared_heads)
    student = student_from_config(model, shaped_config(model, family, shape), attn_implementation="eager")
    prefix, _ = find_layer_list(model)
    wanted = student.state_dict()
    sliced = {}
    for name, tensor in model.state_dict().items():
        sliced[name] = _slice(name, tensor, family=family, indices=indices, layer=_layer_of(name, prefix))
        if name in wanted and sliced[name].shape != wanted[name].shape:
            raise UserError(f"slicing {type(model).__name__} left {name} at {tuple(sliced[name].shape)} where "
                            f"the student needs {tuple(wanted[name].shape)}; pass --student-init random")
    student.load_state_dict(sliced, strict=False)
    missing = set(wanted) - set(sliced)
    if missing:
        raise UserError(f"slicing {type(model).__name__} found no teacher weights for {sorted(missing)[0]}; "
                        "pass --student-init random")
    return student.eval()


def shaped_config(model: nn.Module, family: Family, shape: Shape):
    """`model`'s configuration at `shape`: what a sliced student of it is an instance of."""
    config = copy.deepcopy(model.config)
    config.hidden_size, config.num_attention_heads = shape.hidden, shape.heads
    if family.grouped_kv:
        config.num_key_value_heads, config.head_dim = shape.kv_heads, shape.head_dim
    setattr(config, _intermediate_name(config), shape.intermediate)
    follow_hidden(config, model.config)
    return config


def _slice(name: str, tensor: torch.Tensor, *, family: Family, indices: dict, layer: int | None) -> torch.Tensor:
    for pattern, roles in family.rules:
        if re.search(pattern, name):
            break
    else:
        return tensor.clone()  # nothing width-shaped: kept whole (its shape is checked by the caller)
    for dimension, role in enumerate(roles):
        if role is None:
            continue
        index = indices[role] if role in (HIDDEN, HEAD_IDS) else indices[role][layer]
        tensor = tensor.index_select(dimension, index)
    return tensor.clone()


# ---------------------------------------------------------------------------- --student-config

WIDTH_KEYS = ("hidden", "heads", "intermediate")
STUDENT_INITS = ("slice", "random")


@student_maker
def configured_student(teacher: nn.Module, spec: str, *, init: str = "slice", layers: list[int] | None = None,
                       probe: list[dict[str, torch.Tensor]] | None = None, seed: int = 0) -> nn.Module:
    """The student `--student-config` asks for, for every task. With `init` "slice" (the
    default) it is cut from the teacher: `layers` (or, from `layers=N` in the spec, N evenly
    spaced layers) are kept, then the width is sliced by importance on `probe`. An
    architecture edgekd cannot slice says so in one line and starts from random weights, as
    `init` "random" always does (models.shrunk_student)."""
    from edgekd.models import evenly_spaced, parse_student_config, select_layers, shrunk_student
    from edgekd.progress import console

    if init not in STUDENT_INITS:
        raise UserError(f"--student-init must be one of {', '.join(STUDENT_INITS)}, got '{init}'")
    values = parse_student_config(spec)
    if init == "random" or (family_of(teacher) is None and any(key in values for key in WIDTH_KEYS)):
        if init != "random":
            console.print(f"student: edgekd cannot slice the width of a {type(teacher).__name__} (it slices "
                          f"{', '.join(sorted(FAMILIES))}); starting from random weights", soft_wrap=True)
        if layers is not None:
            raise UserError("--student-layers picks teacher layers to keep, which a randomly initialised "
                            "student has none of; drop it, or use --student-init slice")
        return shrunk_student(teacher, spec, seed=seed)
    total = len(find_layer_list(teacher)[1])
    if layers is None:
        count = values.get("layers", total)
        if count > total:
            raise UserError(f"--student-config asks for {count} layers but the teacher has {total}; a student "
                            "must not be deeper than its teacher")
        layers = evenly_spaced(count, total)
    elif "layers" in values and values["layers"] != len(layers):
        raise UserError(f"--student-config layers={values['layers']} disagrees with --student-layers "
                        f"({len(layers)} layers); give the layers once")
    student = select_layers(teacher, layers) if layers != list(range(total)) else copy.deepcopy(teacher)
    width = {key: values[key] for key in WIDTH_KEYS if key in values}
    if not width:
        return student.eval()
    if not probe:
        raise UserError("slicing the teacher's width needs sample training text; pass --data with texts")
    return sliced_student(student, width, probe)
