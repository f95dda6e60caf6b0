"""The training objective: which model outputs each loss needs, and their weighted sum.

`forward_outputs` runs any encoder classifier and returns the outputs the enabled losses
need (logits; hidden states and attention of mapped layers; the last layer's query, key
and value projections). The same function serves the teacher (online or when building
its cache) and the student, so both sides always describe their layers the same way.

Layer numbers are 0-based transformer layers: hidden state of layer i is the output of
layer i (transformers' `hidden_states[i + 1]`), attention of layer i its probabilities.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from edgekd.config import DistillConfig
from edgekd.training.losses import (attention_kl, hidden_cosine, hidden_mse, kd_loss,
                                   minilm_relations)
from edgekd.errors import UserError
from edgekd.models import find_attention_projections, model_inputs


@dataclass(frozen=True)
class Needs:
    """Which outputs of one model the enabled losses read (logits always)."""

    hidden_layers: tuple[int, ...] = ()
    attention_layers: tuple[int, ...] = ()
    qkv_layer: int | None = None  # the layer whose q/k/v projections MiniLM relates

    def describe(self) -> dict:
        return {"hidden": list(self.hidden_layers), "attention": list(self.attention_layers),
                "qkv": self.qkv_layer}


# ---------------------------------------------------------------------------- layer maps

def default_layer_map(*, student_layers: int, teacher_layers: int,
                      source_layers: list[int] | None) -> list[tuple[int, int]]:
    """Student layer i learns from the teacher layer it was cut from, else the uniform
    choice: the last layer of each of `student_layers` equal blocks of the teacher."""
    if source_layers and len(source_layers) == student_layers:
        return list(enumerate(source_layers))
    return [(i, round((i + 1) * teacher_layers / student_layers) - 1) for i in range(student_layers)]


def parse_layer_map(spec: str, *, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """`--layer-map "0:1,1:5"`: student layer 0 learns from teacher layer 1, 1 from 5."""
    pairs = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        student_text, _, teacher_text = part.partition(":")
        if not (student_text.strip().isdigit() and teacher_text.strip().isdigit()):
            raise UserError(f"--layer-map '{spec}': '{part}' is not STUDENT:TEACHER layer numbers; "
                            "write e.g. 0:1,1:5")
        student_layer, teacher_layer = int(student_text), int(teacher_text)
        if student_layer >= student_layers or teacher_layer >= teacher_layers:
            raise UserError(f"--layer-map '{spec}': pair {part} is out of range (student layers "
                            f"0-{student_layers - 1}, teacher layers 0-{teacher_layers - 1})")
        pairs.append((student_layer, teacher_layer))
    if len({s for s, _ in pairs}) != len(pairs):
        raise UserError(f"--layer-map '{spec}' names a student layer twice; give each at most once")
    return pairs


# ---------------------------------------------------------------------------- forward passes

@contextmanager
def capture_qkv(model: nn.Module, layer: int | None) -> Iterator[list[torch.Tensor]]:
    """Collect the (query, key, value) projection outputs of `layer` during a forward."""
    captured: list[torch.Tensor] = []
    if layer is None:
        yield captured
        return
    handles = [module.register_forward_hook(lambda _m, _i, output: captured.append(output))
               for module in find_attention_projections(model, layer)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def forward_outputs(model: nn.Module, batch: dict[str, torch.Tensor], needs: Needs) -> dict:
    """logits (batch, labels); hidden {layer: (batch, tokens, width)}; attention
    {layer: (batch, heads, tokens, tokens)}; qkv (query, key, value) or None."""
    with capture_qkv(model, needs.qkv_layer) as captured:
        output = model(**model_inputs(model, batch),
                       output_hidden_states=bool(needs.hidden_layers),
                       output_attentions=bool(needs.attention_layers))
    if needs.attention_layers and not output.attentions:
        raise UserError(f"{type(model).__name__} returned no attention probabilities; "
                        "set --attention-weight 0 or load it with eager attention")
    return {"logits": output.logits,
            "hidden": {i: output.hidden_states[i + 1] for i in needs.hidden_layers},
            "attention": {i: output.attentions[i] for i in needs.attention_layers},
            "qkv": tuple(captured) if needs.qkv_layer is not None else None}


# ---------------------------------------------------------------------------- the objective

def _width(config) -> int:
    return int(config.hidden_size)


class Objective(nn.Module):
    """w * CE + (1 - w) * KD (w: the hard-label weight) + the weighted intermediate losses.

    Holds the learned projections (student width -> teacher width, one per mapped layer)
    that the MSE and cosine losses need when widths differ; they train with the student
    and are saved in checkpoints, but not with the student.
    """

    def __init__(self, config: DistillConfig, *, student_config, teacher_config) -> None:
        super().__init__()
        self.config = config
        student_layers = student_config.num_hidden_layers
        teacher_layers = teacher_config.num_hidden_layers
        self.layer_map = (parse_layer_map(config.layer_map, student_layers=student_layers,
                                          teacher_layers=teacher_layers) if config.layer_map
                          else default_layer_map(student_layers=student_layers,
                                                 teacher_layers=teacher_layers,
                                                 source_layers=getattr(student_config,
                                                                       "edgekd_source_layers", None)))
        student_width, teacher_width = _width(student_config), _width(teacher_config)
        project = (config.hidden_mse_weight or config.hidden_cosine_weight) and student_width != teacher_width
        self.projections = nn.ModuleDict({
            str(student_layer): nn.Linear(student_width, teacher_width)
            for student_layer, _ in self.layer_map} if project else {})
        self.relation_heads = self._relation_heads(student_config, teacher_config)
        self.student_layers, self.teacher_layers = student_layers, teacher_layers

    def _relation_heads(self, student_config, teacher_config) -> int:
        if not self.config.minilm_weight:
            return 0
        widths = (_width(student_config), _width(teacher_config))
        heads = self.config.minilm_relation_heads or teacher_config.num_attention_heads
        if any(width % heads for width in widths):
            raise UserError(f"MiniLM relations split both widths {widths} into {heads} heads, "
                            "which does not divide them; set --minilm-relation-heads to a common "
                            f"divisor such as {math.gcd(*widths)}")
        return heads

    def needs(self, side: str) -> Needs:
        """What the losses read from the student (`side="student"`) or the teacher."""
        pick = 0 if side == "student" else 1
        layers = tuple(pair[pick] for pair in self.layer_map)
        config = self.config
        hidden = layers if (config.hidden_mse_weight or config.hidden_cosine_weight) else ()
        last = (self.student_layers if side == "student" else self.teacher_layers) - 1
        return Needs(hidden_layers=hidden,
                     attention_layers=layers if config.attention_weight else (),
                     qkv_layer=last if config.minilm_weight else None)

    @property
    def needs_teacher_logits(self) -> bool:
        return self.config.hard_label_weight < 1

    def forward(self, student: dict, teacher: dict | None, labels: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The total loss and its weighted parts (for logging)."""
        config = self.config
        teacher_logits = teacher["logits"] if teacher is not None else None
        parts = {"kd": kd_loss(student["logits"], teacher_logits, labels,
                               temperature=config.temperature, alpha=config.hard_label_weight)}
        if teacher is not None:
            parts.update(self._intermediate(student, teacher, attention_mask))
        total = torch.stack(list(parts.values())).sum()
        return total, {name: float(value.detach()) for name, value in parts.items()}

    def _intermediate(self, student: dict, teacher: dict, attention_mask: torch.Tensor) -> dict:
        config, parts = self.config, {}
        pairs = self.layer_map
        if config.hidden_mse_weight or config.hidden_cosine_weight:
            projected = [(self._project(s, student["hidden"][s]), teacher["hidden"][t]) for s, t in pairs]
            if config.hidden_mse_weight:
                parts["hidden_mse"] = config.hidden_mse_weight * torch.stack(
                    [hidden_mse(s, t, attention_mask) for s, t in projected]).mean()
            if config.hidden_cosine_weight:
                parts["hidden_cosine"] = config.hidden_cosine_weight * torch.stack(
                    [hidden_cosine(s, t, attention_mask) for s, t in projected]).mean()
        if config.attention_weight:
            parts["attention"] = config.attention_weight * torch.stack(
                [attention_kl(student["attention"][s], teacher["attention"][t], attention_mask)
                 for s, t in pairs]).mean()
        if config.minilm_weight:
            parts["minilm"] = config.minilm_weight * minilm_relations(
                student["qkv"], teacher["qkv"], attention_mask, relation_heads=self.relation_heads)
        return parts

    def _project(self, student_layer: int, states: torch.Tensor) -> torch.Tensor:
        key = str(student_layer)
        return self.projections[key](states) if key in self.projections else states


class ProjectedStudent(nn.Module):
    """The student and the objective's projections as one module, so one optimiser,
    one checkpoint and one DistributedDataParallel wrapper cover everything that learns."""

    def __init__(self, student: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.student = student
        self.objective = objective
        self.student_needs = objective.needs("student")

    def forward(self, batch: dict[str, torch.Tensor], teacher: dict | None
                ) -> tuple[torch.Tensor, dict[str, float]]:
        outputs = forward_outputs(self.student, batch, self.student_needs)
        return self.objective(outputs, teacher, batch["labels"], batch["attention_mask"])
