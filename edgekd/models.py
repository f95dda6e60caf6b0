"""Load teachers and make students.

A student is made from its teacher by layer selection (DistilBERT-style: keep the
embeddings, a chosen subset of transformer layers and the classifier head). The layer
list is found generically (the ModuleList in the base model with one entry per hidden
layer), so BERT, DistilBERT, RoBERTa, ELECTRA and other encoders need no table.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from edgekd.errors import UserError


def load_classifier(name_or_path: str | Path, *, role: str = "teacher",
                    trust_remote_code: bool = False):
    """Load a sequence classifier and its tokenizer from a folder or hub id."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    source = str(name_or_path)
    local = Path(source)
    if (local.exists() and not (local / "config.json").is_file()) or (
            not local.exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1)):
        raise UserError(f"{role} '{source}' is not a model folder (no config.json); "
                        "pass a folder written by save_pretrained or a hub id")
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load {role} config from '{source}': {_first_line(error)}; "
                        "pass a model folder or a hub id you can reach") from error
    architectures = getattr(config, "architectures", None) or []
    if architectures and not any("SequenceClassification" in a for a in architectures):
        raise UserError(f"{role} '{source}' is a {architectures[0]}, not a sequence classifier; "
                        "fine-tune it for classification first (AutoModelForSequenceClassification)")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source, attn_implementation="eager", trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, RuntimeError) as error:
        raise UserError(f"cannot load {role} from '{source}': {_first_line(error)}; "
                        "check that the folder holds weights, config and tokenizer files") from error
    model.eval()
    return model, tokenizer


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList holding the transformer layers: the longest one whose length is the
    config's number of hidden layers. Raises a UserError naming the model when none fits."""
    expected = getattr(model.config, "num_hidden_layers", None)
    candidates = [(name, module) for name, module in model.named_modules()
                  if isinstance(module, nn.ModuleList) and len(module) == expected
                  and len({type(child) for child in module}) == 1]
    if not candidates:
        raise UserError(f"cannot find the list of {expected} transformer layers in "
                        f"{type(model).__name__}; give the student as a model folder instead")
    # The outermost list wins (a layer may hold nested lists of the same length).
    candidates.sort(key=lambda item: item[0].count("."))
    return candidates[0]


def evenly_spaced(count: int, total: int) -> list[int]:
    """`count` layer indices spread over `total`, first and last included (2 of 6 -> 0, 5)."""
    if count == 1:
        return [total - 1]
    return [round(i * (total - 1) / (count - 1)) for i in range(count)]


def parse_layers(spec: str, total: int) -> list[int]:
    """`--student-layers` as a count ("2") or explicit indices ("0,3,5")."""
    spec = str(spec).strip()
    try:
        if "," not in spec:
            count = int(spec)
            if not 1 <= count <= total:
                raise UserError(f"--student-layers {count} is out of range: the teacher has "
                                f"{total} layers; choose 1 to {total}")
            return evenly_spaced(count, total)
        indices = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError as error:
        raise UserError(f"--student-layers '{spec}' is not a count or a comma list of layer "
                        "indices; write e.g. 2 or 0,3,5") from error
    bad = [i for i in indices if not 0 <= i < total]
    if bad or len(set(indices)) != len(indices) or not indices:
        raise UserError(f"--student-layers '{spec}' must list distinct layers from 0 to "
                        f"{total - 1} (the teacher has {total})")
    return sorted(indices)


def select_layers(teacher: nn.Module, layers: list[int]) -> nn.Module:
    """A student: a copy of `teacher` keeping only the transformer layers in `layers`."""
    student = copy.deepcopy(teacher)
    name, layer_list = find_layer_list(student)
    kept = nn.ModuleList([layer_list[i] for i in layers])
    for new_index, layer in enumerate(kept):
        for module in layer.modules():  # decoders index their KV cache by layer_idx
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    parent_name, _, attribute = name.rpartition(".")
    setattr(student.get_submodule(parent_name) if parent_name else student, attribute, kept)
    student.config.num_hidden_layers = len(layers)
    student.config.edgekd_source_layers = list(layers)
    return student


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(model: nn.Module, tokenizer, folder: Path) -> None:
    """A plain save_pretrained folder (safetensors, config with id2label, tokenizer)."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


@torch.no_grad()
def logits_of(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Forward the model inputs of `batch` that `model` accepts; (batch, num_labels)."""
    return model(**model_inputs(model, batch)).logits


def model_inputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The subset of a batch a model takes: DistilBERT has no token_type_ids, BERT does."""
    import inspect

    accepted = inspect.signature(model.forward).parameters
    names = ("input_ids", "attention_mask", "token_type_ids")
    return {name: batch[name] for name in names if name in batch and name in accepted}
