"""Image classifiers: loading, the features the losses read, and students made three ways.

- **Layers cut from the teacher.** A vision transformer (ViT, DeiT, ...) keeps a subset of
  its blocks, as a text encoder does (edgekd/models.py). A network of stages (ResNet,
  ConvNeXt, RegNet: `config.depths`) keeps the first blocks of every stage: the first block
  of a stage changes the width and the stride, the later ones map a shape onto itself, so
  dropping them is well defined. Networks whose blocks each change the shape (MobileNet)
  cannot be cut and are refused by name.
- **A shrunk configuration**, randomly initialised: fewer/narrower blocks (`layers`,
  `hidden`, `heads`, `intermediate`, `patch`, `image` for transformers; `depth`, `width`
  for stage networks; `width` for MobileNet's depth multiplier).
- **Any image classifier given**, of any family: a ViT teacher can teach a CNN student.

Feature distillation reads every model the same way: each block's (or stage's) output as a
feature map (batch, channels, height, width); a transformer's patch tokens are laid out on
their grid (class and distillation tokens dropped), so maps of any two families can be
compared after a learned 1x1 convolution (edgekd/vision/train.py).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch
from torch import nn

from edgekd.errors import UserError
from edgekd.models import student_from_config, student_maker

TRANSFORMER_KEYS = {"layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
                    "intermediate": "intermediate_size", "patch": "patch_size", "image": "image_size"}
STAGE_KEYS = ("depth", "width")


def load_image_classifier(source: str | Path, *, role: str = "teacher", trust_remote_code: bool = False):
    """An image classifier and its image processor from a folder or hub id."""
    from edgekd.models import load_model

    return load_model(source, task="image-classification", role=role, trust_remote_code=trust_remote_code)


def is_transformer(model: nn.Module) -> bool:
    """Blocks of attention over patch tokens (the model can return attention maps)."""
    config = model.config
    return hasattr(config, "num_attention_heads") and hasattr(config, "patch_size") and not hasattr(config, "depths")


def feature_maps(model: nn.Module, pixel_values: torch.Tensor, *, attentions: bool = False) -> dict:
    """{"logits", "maps": [(batch, C, H, W) per block or stage], "attentions": [...] or None}."""
    output = model(pixel_values=pixel_values, output_hidden_states=True,
                   output_attentions=attentions and is_transformer(model))
    states = list(output.hidden_states or ())[1:]  # after the stem: one per block or stage
    return {"logits": output.logits, "maps": [as_map(state) for state in states],
            "attentions": list(output.attentions) if attentions and is_transformer(model) else None}


def as_map(state: torch.Tensor) -> torch.Tensor:
    """A block's output as (batch, channels, height, width): maps as they are; tokens
    (batch, tokens, channels) with their leading class/distillation tokens dropped and the
    patch tokens laid out on their square grid."""
    if state.dim() == 4:
        return state
    if state.dim() != 3:
        raise UserError(f"cannot read a feature map from a block output of shape {tuple(state.shape)}; "
                        "set --hidden-mse-weight 0")
    tokens = state.shape[1]
    side = int(tokens ** 0.5)
    while side * side > tokens or (tokens - side * side) > 2:
        side -= 1
    if side < 1 or tokens - side * side > 2:
        raise UserError(f"a block output of {tokens} tokens is not a square grid of patches; "
                        "set --hidden-mse-weight 0")
    grid = state[:, tokens - side * side:]
    return grid.transpose(1, 2).reshape(state.shape[0], state.shape[2], side, side)


# ---------------------------------------------------------------------------- students

@student_maker
def make_image_student(teacher: nn.Module, processor, *, layers: str | None = None, config_spec: str | None = None,
                       model: str | None = None, seed: int = 0, trust_remote_code: bool = False,
                       probe: list[dict] | None = None):
    """(student, its image processor), made as `--student-layers`, `--student-config` or `--student` say.
    A ViT's `--student-config` of layers, hidden, heads and intermediate is sliced from the
    teacher by activation importance on `probe` (pixel batches), as a text encoder's is;
    any other is a random student of the shrunk configuration."""
    if sum(x is not None for x in (layers, config_spec, model)) > 1:
        raise UserError("give one of --student-layers, --student-config and --student")
    if model is not None:
        student, student_processor = load_image_classifier(model, role="student", trust_remote_code=trust_remote_code)
        check_labels(teacher, student, source=model)
        return student, student_processor
    if config_spec is not None and slices_width(teacher, config_spec):
        from edgekd.slicing import configured_student

        if not probe:
            raise UserError("slicing the teacher's width needs sample training images; pass --data with images")
        return configured_student(teacher, config_spec, probe=probe, seed=seed), processor
    if config_spec is not None:
        student = shrunk_image_student(teacher, config_spec, seed=seed)
        return student, processor_for(student, processor)
    return cut_student(teacher, layers or "1"), processor


def slices_width(teacher: nn.Module, spec: str) -> bool:
    """Whether `--student-config spec` is cut from the teacher's weights (edgekd/slicing.py):
    a transformer family edgekd slices, asked for layers, hidden, heads or intermediate only
    (a new patch or image size has no teacher weights to keep)."""
    from edgekd.slicing import family_of

    return (is_transformer(teacher) and family_of(teacher) is not None
            and set(parse_image_spec(spec)) <= {"layers", "hidden", "heads", "intermediate"})


def check_labels(teacher: nn.Module, student: nn.Module, *, source: str) -> None:
    """A given student must predict the teacher's classes, in the teacher's order."""
    ours = [student.config.id2label[i] for i in range(student.config.num_labels)]
    theirs = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
    if ours != theirs:
        raise UserError(f"student '{source}' predicts {len(ours)} classes ({', '.join(map(str, ours[:4]))}, ...), "
                        f"the teacher {len(theirs)} ({', '.join(map(str, theirs[:4]))}, ...); give a student "
                        "with the teacher's labels (id2label) in the same order")


@student_maker
def cut_student(teacher: nn.Module, spec: str) -> nn.Module:
    """The teacher with fewer blocks (`spec`: a transformer's block count or indices; a stage
    network's blocks per stage, one count for all or one per stage: 1 or 1,1,2,1)."""
    from edgekd.models import find_layer_list, parse_layers, select_layers

    if is_transformer(teacher):
        return select_layers(teacher, parse_layers(spec, len(find_layer_list(teacher)[1])))
    depths = getattr(teacher.config, "depths", None)
    if not depths:
        raise UserError(f"{type(teacher).__name__} cannot be cut by layers: its blocks each change the "
                        "feature shape; shrink it with --student-config width=0.5 or give --student")
    kept = _per_stage(spec, list(depths))
    student = copy.deepcopy(teacher)
    for stage, (container, count) in enumerate(zip(_stage_blocks(student, list(depths)), kept)):
        if isinstance(container, nn.Sequential):
            blocks = list(container.children())[:count]
            container._modules.clear()
            for index, block in enumerate(blocks):
                container.add_module(str(index), block)
        else:
            del container[count:]
    student.config.depths = kept
    student.config.edgekd_source_blocks = kept
    return student.eval()


def _per_stage(spec: str, depths: list[int]) -> list[int]:
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) >= 1 for p in parts) or len(parts) not in (1, len(depths)):
        raise UserError(f"--student-layers '{spec}': a network of {len(depths)} stages ({'-'.join(map(str, depths))} "
                        f"blocks) keeps blocks per stage: one count for all (1) or one per stage "
                        f"({','.join('1' for _ in depths)})")
    counts = [int(parts[0])] * len(depths) if len(parts) == 1 else [int(p) for p in parts]
    return [min(count, depth) for count, depth in zip(counts, depths)]


def _stage_blocks(model: nn.Module, depths: list[int]) -> list[nn.Module]:
    """Each stage's container of blocks: the outermost Sequential/ModuleList of `depths[i]`
    modules under the i-th stage (found by structure: stages are the children of the first
    ModuleList with one entry per stage)."""
    stages = next((m for _, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == len(depths)
                   and all(_blocks_of(stage, depth) is not None for stage, depth in zip(m, depths))), None)
    if stages is None:
        raise UserError(f"cannot find the {len(depths)} stages of {type(model).__name__}; give the student "
                        "with --student or --student-config")
    return [_blocks_of(stage, depth) for stage, depth in zip(stages, depths)]


def _blocks_of(stage: nn.Module, depth: int):
    for _, module in stage.named_modules():
        if (isinstance(module, (nn.Sequential, nn.ModuleList)) and len(module) == depth and depth > 0
                and len({type(block) for block in module}) == 1):  # blocks, not a stem of norm + conv
            return module
    return None


def parse_image_spec(spec: str) -> dict[str, float]:
    values = {}
    keys = (*TRANSFORMER_KEYS, *STAGE_KEYS)
    for part in filter(None, (p.strip() for p in str(spec).split(","))):
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in keys or not re.fullmatch(r"\d+(\.\d+)?", value.strip()) or float(value) <= 0:
            raise UserError(f"--student-config '{spec}': '{part}' is not KEY=POSITIVE_NUMBER with KEY one of "
                            f"{', '.join(keys)}; write e.g. hidden=192,layers=4 (transformers) or "
                            "depth=1,width=0.5 (stage networks)")
        values[key] = float(value)
    if not values:
        raise UserError("--student-config is empty; write e.g. depth=1,width=0.5 or hidden=192,layers=4")
    return values


@student_maker
def shrunk_image_student(teacher: nn.Module, spec: str, *, seed: int = 0) -> nn.Module:
    """A randomly initialised student of the teacher's class with a shrunk configuration."""
    values = parse_image_spec(spec)
    config = copy.deepcopy(teacher.config)
    if is_transformer(teacher):
        unknown = sorted(set(values) - set(TRANSFORMER_KEYS))
        if unknown:
            raise UserError(f"--student-config: '{unknown[0]}' does not apply to {type(teacher).__name__}; "
                            f"use {', '.join(TRANSFORMER_KEYS)}")
        for key, value in values.items():
            if value != int(value):
                raise UserError(f"--student-config: {key} must be a whole number, got {value:g}")
            if not hasattr(config, TRANSFORMER_KEYS[key]):
                raise UserError(f"--student-config: '{key}' does not apply to {type(teacher).__name__} (its config "
                                f"has no {TRANSFORMER_KEYS[key]}); give the student with --student")
            setattr(config, TRANSFORMER_KEYS[key], int(value))
        if config.hidden_size % config.num_attention_heads:
            raise UserError(f"--student-config: hidden={config.hidden_size} is not divisible by "
                            f"heads={config.num_attention_heads}; choose a head count that divides it")
        if config.num_hidden_layers > teacher.config.num_hidden_layers:
            raise UserError("--student-config asks for more layers than the teacher has; a student must "
                            "not be deeper than its teacher")
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        if size % config.patch_size:
            raise UserError(f"--student-config: image={size} is not a multiple of patch={config.patch_size}")
    elif getattr(config, "depths", None):
        unknown = sorted(set(values) - set(STAGE_KEYS))
        if unknown:
            raise UserError(f"--student-config: '{unknown[0]}' does not apply to {type(teacher).__name__}; "
                            "use depth (blocks per stage) and width (a share of every stage's channels)")
        if "depth" in values:
            config.depths = [min(int(values["depth"]), depth) for depth in config.depths]
        if "width" in values and getattr(config, "hidden_sizes", None):
            config.hidden_sizes = [max(1, round(width * values["width"])) for width in config.hidden_sizes]
            if hasattr(config, "embedding_size"):
                config.embedding_size = max(1, round(config.embedding_size * values["width"]))
        elif "width" in values and getattr(config, "embed_dim", None):  # Swin-like: every stage doubles it
            share = max(1, round(config.embed_dim * values["width"])) / config.embed_dim
            config.embed_dim = round(config.embed_dim * share)
            if hasattr(config, "hidden_size"):
                config.hidden_size = round(config.hidden_size * share)
            for stage, heads in enumerate(getattr(config, "num_heads", None) or []):
                if (config.embed_dim * 2 ** stage) % heads:
                    raise UserError(f"--student-config: width={values['width']:g} makes stage {stage + 1} "
                                    f"{config.embed_dim * 2 ** stage} channels wide, not divisible by its {heads} "
                                    "heads; choose a width that keeps them divisible")
        elif "width" in values:
            raise UserError(f"--student-config: 'width' does not apply to {type(teacher).__name__} (its config "
                            "names no stage widths); give the student with --student")
    elif hasattr(config, "depth_multiplier") and set(values) <= {"width"}:
        config.depth_multiplier = config.depth_multiplier * values["width"]
    else:
        raise UserError(f"--student-config cannot shrink {type(teacher).__name__}; give the student with --student")
    for stale in ("edgekd_source_layers", "edgekd_source_blocks"):
        if hasattr(config, stale):
            delattr(config, stale)
    torch.manual_seed(seed)
    options = {"attn_implementation": "eager"} if is_transformer(teacher) else {}
    return student_from_config(teacher, config, **options).eval()


def processor_for(student: nn.Module, processor):
    """The teacher's image processor, resized to the student's input size where the
    student's configuration fixes one (a transformer's image_size)."""
    size = getattr(student.config, "image_size", None)
    if not is_transformer(student) or size is None:
        return processor
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return resized_processor(processor, height, width)


def resized_processor(processor, height: int, width: int):
    """A copy of `processor` that makes height x width pixels (a fixed size, or the shortest
    edge for processors that keep the aspect ratio, and the crop)."""
    resized = copy.deepcopy(processor)
    current = getattr(resized, "size", None)
    if getattr(current, "height", None) is not None or (isinstance(current, dict) and "height" in current):
        resized.size = {"height": height, "width": width}
    else:
        resized.size = {"shortest_edge": min(height, width)}
    if getattr(resized, "crop_size", None):
        resized.crop_size = {"height": height, "width": width}
    return resized
