"""Load teachers and make students.

A student is made three ways: by layer selection from its teacher (DistilBERT-style:
keep the embeddings, a chosen subset of transformer layers and the classifier head), from
a shrunk copy of the teacher's configuration (randomly initialised, embeddings inherited
where their shape allows), or given as a model folder or hub id. The layer list and the
attention projections are found generically (by structure, not a per-architecture table),
so BERT, DistilBERT, RoBERTa, ELECTRA, DeBERTa-v2 and other encoders need no special case;
ALBERT, which runs one shared group of layers several times, is cut by running it fewer
times; a model where the layers cannot be found gets an error naming what is missing.
"""

from __future__ import annotations

import copy
import functools
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from edgekd.errors import UserError, first_line


# What each task's models are called in errors, and how a wrong one is fixed.
MODEL_KINDS = {"text-classification": ("a sequence classifier", "fine-tune it for classification first "
                                        "(AutoModelForSequenceClassification; a teacher: or pass --fine-tune-teacher)"),
               "causal-lm": ("a causal language model", "pass an AutoModelForCausalLM (or a .gguf file)"),
               "image-classification": ("an image classifier", "fine-tune it for image classification first "
                                        "(AutoModelForImageClassification)")}


def load_model(name_or_path: str | Path, *, task: str, role: str = "teacher", trust_remote_code: bool = False,
               dtype=torch.float32):
    """A model of `task` (edgekd.tasks) and its tokenizer from a folder or hub id, loaded with
    its task's Auto class and eager attention (attention probabilities for the losses; the
    attention graph ONNX Runtime fuses)."""
    import transformers
    from safetensors import SafetensorError

    from edgekd.tasks import TASKS

    source = str(name_or_path)
    local = Path(source)
    if (local.exists() and not (local / "config.json").is_file()) or (
            not local.exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1)):
        raise UserError(f"{role} '{source}' is not a model folder (no config.json); "
                        "pass a folder written by save_pretrained or a hub id")
    try:
        config = transformers.AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        if "trust_remote_code" in str(error) and not trust_remote_code:
            raise UserError(f"{role} '{source}' needs its own Python code to load; edgekd never "
                            "runs a model's code unless you pass --trust-remote-code "
                            "(only for folders you trust)") from error
        raise UserError(f"cannot load {role} config from '{source}': {first_line(error)}; "
                        "pass a model folder or a hub id you can reach") from error
    _check_task(config, task=task, role=role, source=source)
    try:
        model, loading = getattr(transformers, TASKS[task].auto_class).from_pretrained(
            source, attn_implementation="eager", trust_remote_code=trust_remote_code, dtype=dtype,
            output_loading_info=True)
        tokenizer = load_preprocessor(source, task=task, trust_remote_code=trust_remote_code)
    except pickle.UnpicklingError as error:
        raise UserError(f"{role} '{source}' stores its weights as a pickle that holds more than "
                        "tensors; edgekd never runs such files: convert the weights to "
                        "safetensors from a source you trust") from error
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        if "ignore_mismatched_sizes" in str(error):
            _refuse_mismatched_weights(source, task=task, role=role, trust_remote_code=trust_remote_code)
        raise UserError(f"cannot load {role} from '{source}': {first_line(error)}; "
                        "check that the folder holds weights, config and tokenizer files") from error
    if TASKS[task].contract == "classifier":
        _check_head(model, loading, role=role, source=source, task=task)
    return model.eval(), tokenizer


def _check_head(model: nn.Module, loading: dict, *, role: str, source: str, task: str) -> None:
    """A classifier whose head the checkpoint lacks (saved from the base model, the usual
    mistake) would teach or be measured with random logits: refused by name."""
    prefix = f"{model.base_model_prefix}."
    missing = sorted(key for key in loading.get("missing_keys", ()) if not key.startswith(prefix))
    if missing:
        raise UserError(f"{role} '{source}' has no weights for its classification head ({', '.join(missing[:3])}): "
                        "it was saved from the base model, so its logits would be random; fine-tune it for "
                        "classification first and pass that folder"
                        + (", or pass --fine-tune-teacher" if role == "teacher" and _fine_tunes_teachers(task) else ""))


def _fine_tunes_teachers(task: str) -> bool:
    from edgekd.tasks import TASKS

    return "fine_tune_teacher" in TASKS[task].options.get("distill", ())


def _refuse_mismatched_weights(source: str, *, task: str, role: str, trust_remote_code: bool) -> None:
    """Weights whose shapes differ from the config's (a head for 3 labels beside an id2label of 2):
    refused naming the weight, both shapes and the config field to fix."""
    import transformers

    from edgekd.tasks import TASKS

    model, loading = getattr(transformers, TASKS[task].auto_class).from_pretrained(
        source, trust_remote_code=trust_remote_code, ignore_mismatched_sizes=True, output_loading_info=True)
    if not loading.get("mismatched_keys"):
        return
    key, saved, expected = max(sorted(loading["mismatched_keys"]), key=lambda item: len(item[1]))
    if TASKS[task].contract == "classifier" and not key.startswith(f"{model.base_model_prefix}."):
        raise UserError(f"{role} '{source}': its classification head was trained on {saved[0]} labels "
                        f"({key} has shape {list(saved)}) but config.json's id2label names {expected[0]}; "
                        "make id2label and label2id name every label the head was trained on")
    raise UserError(f"{role} '{source}': the weight {key} has shape {list(saved)} but config.json makes it "
                    f"{list(expected)}; save the config with the weights it was trained with")


def load_preprocessor(source: str | Path, *, task: str, trust_remote_code: bool = False):
    """What turns the task's inputs into tensors: a tokenizer, or an image processor (its
    Pillow implementation: the same pixels everywhere, and no torchvision needed)."""
    import transformers

    from edgekd.tasks import TASKS

    loader = getattr(transformers, TASKS[task].preprocessor_class)
    options = {"backend": "pil"} if TASKS[task].preprocessor_class == "AutoImageProcessor" else {}
    return loader.from_pretrained(str(source), trust_remote_code=trust_remote_code, **options)


def _check_task(config, *, task: str, role: str, source: str) -> None:
    """A model of another task (a masked LM, a classifier as a next-token teacher) is refused by name."""
    from edgekd.tasks import task_of_config

    architectures = getattr(config, "architectures", None) or []
    if task_of_config({"architectures": architectures, "model_type": config.model_type}) != task:
        kind, fix = MODEL_KINDS[task]
        what = f"a {architectures[0]}" if architectures else f"a {config.model_type} model"
        raise UserError(f"{role} '{source}' is {what}, not {kind}; {fix}")


def load_classifier(name_or_path: str | Path, *, role: str = "teacher", trust_remote_code: bool = False):
    """A sequence classifier and its tokenizer from a folder or hub id."""
    return load_model(name_or_path, task="text-classification", role=role, trust_remote_code=trust_remote_code)


def load_for_fine_tuning(name_or_path: str | Path, *, labels: list[str], seed: int, trust_remote_code: bool = False):
    """A pretrained encoder (a sentence-transformers checkpoint, a masked LM, or a classifier of
    other labels) as a sequence classifier of `labels`, its head new (drawn with `seed`), and
    its tokenizer: what --fine-tune-teacher trains."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    source = str(name_or_path)
    try:
        config = transformers.AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load teacher config from '{source}': {first_line(error)}; "
                        "pass a model folder or a hub id you can reach") from error
    if config.model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES and not trust_remote_code:
        raise UserError(f"teacher '{source}' is a {config.model_type} model, which transformers cannot make a "
                        "sequence classifier of; --fine-tune-teacher needs an encoder such as BERT or MPNet")
    torch.manual_seed(seed)  # the new head: the same weights, and the same cache key, every run
    try:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)}, ignore_mismatched_sizes=True,
            attn_implementation="eager", trust_remote_code=trust_remote_code)
        tokenizer = load_preprocessor(source, task="text-classification", trust_remote_code=trust_remote_code)
    except pickle.UnpicklingError as error:
        raise UserError(f"teacher '{source}' stores its weights as a pickle that holds more than tensors; "
                        "edgekd never runs such files: convert the weights to safetensors") from error
    except (OSError, ValueError, RuntimeError) as error:
        raise UserError(f"cannot load teacher from '{source}': {first_line(error)}; "
                        "check that the folder holds weights, config and tokenizer files") from error
    return model, tokenizer



def find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList holding the transformer layers: the longest one whose length is the
    config's number of hidden layers. Raises a UserError naming the model when none fits."""
    expected = getattr(model.config, "num_hidden_layers", None)
    candidates = [(name, module) for name, module in model.named_modules()
                  if isinstance(module, nn.ModuleList) and len(module) == expected
                  and len({type(child) for child in module}) == 1]
    blocks = getattr(model.config, "block_sizes", None)
    if not candidates and isinstance(blocks, (list, tuple)):  # Funnel: layers in blocks, pooled between them
        raise UserError(f"{type(model).__name__} keeps its layers in {len(blocks)} blocks of {list(blocks)}, pooling "
                        "between them, not in one list a layer cut can choose from; make the student with "
                        "--student-config or give it with --student")
    if not candidates:
        what = f"the list of {expected} transformer layers" if expected else "a list of transformer layers"
        raise UserError(f"cannot find {what} in {type(model).__name__}; give the student as a model folder "
                        "instead")
    # The outermost list wins (a layer may hold nested lists of the same length).
    candidates.sort(key=lambda item: item[0].count("."))
    return candidates[0]


def shares_layers(model: nn.Module) -> bool:
    """Whether the model repeats fewer layer groups than it runs layers (ALBERT: one shared
    group, run `num_hidden_layers` times): its depth is a config number, not a list."""
    config = model.config
    groups = getattr(config, "num_hidden_groups", None)
    return groups is not None and groups < config.num_hidden_layers


def layer_count(model: nn.Module) -> int:
    """How many transformer layers the model runs."""
    if shares_layers(model):
        return model.config.num_hidden_layers
    return len(find_layer_list(model)[1])


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


def student_maker(make):
    """A way of making a student that fails in an architecture's own code (a config that
    refuses a field, a layer its cut leaves inconsistent) says so in one line naming the
    teacher's class, before any work."""
    @functools.wraps(make)
    def refused_by_name(teacher, *args, **kwargs):
        try:
            return make(teacher, *args, **kwargs)
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - any architecture's own code
            raise UserError(f"edgekd cannot make a student of {type(teacher).__name__} this way "
                            f"({first_line(error)[:160]}); try other --student-layers or --student-config "
                            "values, or give the student with --student") from error
    return refused_by_name


@student_maker
def select_layers(teacher: nn.Module, layers: list[int]) -> nn.Module:
    """A student: a copy of `teacher` keeping only the transformer layers in `layers`.

    A model that shares its layers (ALBERT) keeps every group and runs fewer repeats of
    them: `layers` then says how many, and which teacher layers they stand for."""
    if shares_layers(teacher):
        return _fewer_repeats(teacher, layers)
    student = copy.deepcopy(teacher)
    name, layer_list = find_layer_list(student)
    parent_name, _, _ = name.rpartition(".")
    parent = student.get_submodule(parent_name) if parent_name else student
    # XLM and FlauBERT keep each layer's parts in parallel lists: every list beside it is cut alike
    for attribute, siblings in list(parent.named_children()):
        if isinstance(siblings, nn.ModuleList) and len(siblings) == len(layer_list):
            kept = nn.ModuleList([siblings[i] for i in layers])
            for new_index, (old_index, layer) in enumerate(zip(layers, kept)):
                for module in layer.modules():  # decoders index their KV cache by layer_idx
                    if hasattr(module, "layer_idx"):
                        module.layer_idx = new_index
                    if getattr(module, "layer_id", None) == old_index:  # XLM's name for it
                        module.layer_id = new_index
            setattr(parent, attribute, kept)
    for count in ("n_layers", "num_layers", "num_hidden_layers"):  # a depth the module copied from its config
        if getattr(parent, count, None) == len(layer_list):
            setattr(parent, count, len(layers))
    student.config.num_hidden_layers = len(layers)
    if getattr(student.config, "num_hidden_groups", None) is not None:  # ALBERT, one group per layer
        student.config.num_hidden_groups = len(layers)
    cut_per_layer_fields(student.config, layers, total=len(layer_list))
    _backbone_stages(student.config, total=len(layer_list))
    student.config.edgekd_source_layers = list(layers)
    type(student.config).from_dict(student.config.to_dict())  # the student's config must load again
    return student


PER_LAYER = {"layer_types", "attention_window", "layers_block_type", "no_rope_layers"}  # known to be per layer
NOT_PER_LAYER = {"architectures", "hidden_sizes", "depths", "out_features", "out_indices", "stage_names",
                 "pos_att_type"}


def _backbone_stages(config, *, total: int) -> None:
    """A ViT-like config that names one backbone stage per layer (BEiT, DINOv2: stem, stage1, ...)
    names the student's stages, its output the last of them."""
    stages = getattr(config, "stage_names", None)
    if not stages or len(stages) != total + 1:
        return
    count = config.num_hidden_layers
    config.stage_names = list(stages[:count + 1])
    if hasattr(config, "set_output_features_output_indices"):
        config.set_output_features_output_indices(out_features=[config.stage_names[-1]], out_indices=None)
    else:
        config.out_features, config.out_indices = [config.stage_names[-1]], [count]


def cut_per_layer_fields(config, layers: list[int], *, total: int) -> None:
    """Config fields with one entry per layer follow the kept layers (Longformer's
    `attention_window`, the full/sliding `layer_types` of Gemma 2/3, Qwen3 and others), or the
    student's config would describe the teacher's depth and not load again. Besides the fields
    known to be per layer, any list as long as the layers is taken for one from three layers on
    (two entries are too often something else, such as DeBERTa's `pos_att_type`)."""
    for name, value in list(config.to_dict().items()):
        if ("layer" in name and isinstance(value, dict) and value
                and all(str(key).isdigit() and int(key) < total for key in value)):
            by_layer = {int(key): entry for key, entry in value.items()}  # Gemma 4's per_layer_config
            setattr(config, name, {type(next(iter(value)))(new): by_layer[old]
                                   for new, old in enumerate(layers) if old in by_layer})
            continue
        if not isinstance(value, (list, tuple)) or len(value) != total or name in NOT_PER_LAYER:
            continue
        if name in PER_LAYER or total >= 3:
            setattr(config, name, type(value)(value[i] for i in layers))


def _fewer_repeats(teacher: nn.Module, layers: list[int]) -> nn.Module:
    groups, count = teacher.config.num_hidden_groups, len(layers)
    if count % groups:
        raise UserError(f"{type(teacher).__name__} runs {groups} shared layer groups: a student keeps "
                        f"a multiple of {groups} layers, not {count}")
    student = copy.deepcopy(teacher)
    student.config.num_hidden_layers = count
    student.config.edgekd_source_layers = list(layers)
    return student


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def student_from_config(teacher: nn.Module, config, **options) -> nn.Module:
    """A randomly initialised student of the teacher's class. A config the class cannot build, or
    one that makes a student larger than its teacher, is refused in one line before any memory
    is spent (the probe is built on the meta device, outside the random stream)."""
    kind = type(teacher)
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            probe = kind._from_config(copy.deepcopy(config), **options)
    except Exception as error:  # noqa: BLE001 - any architecture's own shape check
        raise UserError(f"--student-config makes a {kind.__name__} its code cannot build "
                        f"({first_line(error)[:160]}); choose other values") from error
    size, limit = count_parameters(probe), count_parameters(teacher)
    if size > limit:
        raise UserError(f"--student-config makes a student of {size:,} parameters, more than the teacher's "
                        f"{limit:,}; choose smaller values")
    return kind._from_config(config, **options)


def save_model(model: nn.Module, tokenizer, folder: Path) -> None:
    """A plain save_pretrained folder (safetensors, config with id2label, tokenizer)."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def model_inputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The subset of a batch a model takes: DistilBERT has no token_type_ids, BERT does;
    an image classifier takes pixel_values."""
    import inspect

    accepted = inspect.signature(model.forward).parameters
    names = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")
    return {name: batch[name] for name in names if name in batch and name in accepted}


# ---------------------------------------------------------------------------- attention modules

# The last component of a projection's module name, per role, across naming conventions
# (BERT/RoBERTa/ELECTRA `query`, DistilBERT `q_lin`, many newer encoders `q_proj`).
_PROJECTION_NAMES = {"query": re.compile(r"^(query|q|q_lin|q_proj|query_proj)$"),
                     "key": re.compile(r"^(key|k|k_lin|k_proj|key_proj)$"),
                     "value": re.compile(r"^(value|v|v_lin|v_proj|value_proj)$")}


def find_attention_projections(model: nn.Module, layer_index: int) -> tuple[nn.Linear, ...]:
    """The (query, key, value) linear layers of transformer layer `layer_index`.

    Raises a UserError naming the layer when they cannot be found (e.g. a fused qkv
    projection), since the MiniLM relation loss needs the three separately.
    """
    if shares_layers(model):
        raise UserError(f"{type(model).__name__} shares one set of query/key/value projections across "
                        "its layers, so the MiniLM relation loss cannot read one layer's: set --minilm-weight 0")
    _, layers = find_layer_list(model)
    layer = layers[layer_index]
    found = {}
    for name, module in layer.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        for role, pattern in _PROJECTION_NAMES.items():
            if pattern.match(name.rpartition(".")[2]):
                found.setdefault(role, module)
    missing = [role for role in _PROJECTION_NAMES if role not in found]
    if missing:
        raise UserError(f"cannot find the {'/'.join(missing)} projection(s) in layer {layer_index} "
                        f"of {type(model).__name__}; the MiniLM relation loss needs separate "
                        "query, key and value linear layers: set --minilm-weight 0")
    return found["query"], found["key"], found["value"]


def use_eager_attention(model: nn.Module) -> None:
    """Attention probabilities are only returned by the eager implementation."""
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        model.set_attn_implementation("eager")


# ---------------------------------------------------------------------------- making students

# `--student-config` keys -> the config attribute holding them. transformers maps the
# canonical names onto each architecture's own (DistilBERT `dim`, `n_layers`, `n_heads`)
# through `attribute_map`; only the feed-forward width has no canonical name.
_SHRINK_KEYS = {"hidden": "hidden_size", "layers": "num_hidden_layers",
                "heads": "num_attention_heads", "intermediate": None}
_INTERMEDIATE_NAMES = ("intermediate_size", "hidden_dim", "ffn_dim", "encoder_ffn_dim", "n_inner", "d_ff", "dff",
                       "ffn_hidden_size")
# widths a config derives from the hidden size unless told otherwise: they follow a new width
_FOLLOW_HIDDEN = ("pooler_hidden_size", "embedding_size")


def follow_hidden(config, teacher_config) -> None:
    """Fields that were the teacher's hidden size (DeBERTa's pooler, an unfactorised embedding)
    become the student's; a factorised embedding (ELECTRA's 128 under 256) keeps its width."""
    for name in _FOLLOW_HIDDEN:
        if getattr(teacher_config, name, None) == teacher_config.hidden_size:
            setattr(config, name, config.hidden_size)


def parse_student_config(spec: str) -> dict[str, int]:
    """`hidden=256,layers=4,heads=4,intermediate=1024` (any subset) -> {key: value}."""
    values = {}
    for part in filter(None, (p.strip() for p in str(spec).split(","))):
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in _SHRINK_KEYS or not value.strip().isdigit() or int(value) < 1:
            raise UserError(f"--student-config '{spec}': '{part}' is not KEY=POSITIVE_INT with KEY "
                            f"one of {', '.join(_SHRINK_KEYS)}; write e.g. hidden=256,layers=4")
        values[key] = int(value)
    if not values:
        raise UserError("--student-config is empty; write e.g. hidden=256,layers=4,heads=4")
    return values


def head_size(config) -> int:
    """Channels per attention head (decoders may say so; otherwise hidden / heads)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def ffn_width(config) -> int | None:
    """The feed-forward width, or None when the configuration names none of _INTERMEDIATE_NAMES."""
    for name in _INTERMEDIATE_NAMES:
        if getattr(config, name, None):
            return int(getattr(config, name))
    return None


def _intermediate_name(config) -> str:
    for name in _INTERMEDIATE_NAMES:
        if hasattr(config, name):
            return name
    raise UserError(f"cannot find the feed-forward width in a {type(config).__name__} "
                    f"(looked for {', '.join(_INTERMEDIATE_NAMES)}); leave out 'intermediate='")


def _settable(config, name: str) -> bool:
    """A plain field, not a property the config derives (Falcon's head_dim)."""
    attribute = getattr(type(config), name, None)
    return not isinstance(attribute, property) or attribute.fset is not None


@student_maker
def shrunk_student(teacher: nn.Module, spec: str, *, seed: int = 0) -> nn.Module:
    """A randomly initialised student of the teacher's own class, shrunk per `spec`, for every task.

    Embedding tensors whose shape still matches (all of them when the width is kept;
    ELECTRA's factorised embeddings at any width) are copied from the teacher, which
    is the part of the teacher that transfers without a choice of how to cut it. A decoder
    whose key/value head count no longer divides the heads gets one key/value head per head.
    """
    values = parse_student_config(spec)
    config = copy.deepcopy(teacher.config)
    teacher_layers = config.num_hidden_layers
    for key, value in values.items():
        setattr(config, _SHRINK_KEYS[key] or _intermediate_name(config), value)
    if "heads" in values and getattr(config, "num_key_value_heads", None) and values["heads"] % config.num_key_value_heads:
        config.num_key_value_heads = values["heads"]
    if "hidden" in values and getattr(config, "head_dim", None) and _settable(config, "head_dim"):
        config.head_dim = config.hidden_size // config.num_attention_heads
    follow_hidden(config, teacher.config)
    if config.num_hidden_layers > teacher_layers:
        raise UserError(f"--student-config asks for {config.num_hidden_layers} layers but the "
                        f"teacher has {teacher_layers}; a student must not be deeper than its teacher")
    if config.num_hidden_layers < teacher_layers:  # per-layer fields keep the teacher's pattern from its start
        cut_per_layer_fields(config, list(range(config.num_hidden_layers)), total=teacher_layers)
    if config.hidden_size % config.num_attention_heads:
        raise UserError(f"--student-config: hidden={config.hidden_size} is not divisible by "
                        f"heads={config.num_attention_heads}; choose a head count that divides it")
    for stale in ("edgekd_source_layers",):
        if hasattr(config, stale):
            delattr(config, stale)
    torch.manual_seed(seed)
    student = student_from_config(teacher, config, attn_implementation="eager")
    inherited = {name: tensor for name, tensor in teacher.state_dict().items() if "embed" in name}
    own = student.state_dict()
    with torch.no_grad():
        for name, tensor in inherited.items():
            if name in own and own[name].shape == tensor.shape:
                own[name].copy_(tensor)
    return student.eval()


def load_student(source: str | Path, *, teacher: nn.Module) -> tuple[nn.Module, object]:
    """A given student (folder or hub id). A plain encoder gets a fresh head with the
    teacher's labels; a classifier must already have the teacher's labels."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(str(source))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load student config from '{source}': {first_line(error)}; "
                        "pass a model folder or a hub id you can reach") from error
    architectures = getattr(config, "architectures", None) or []
    if any("SequenceClassification" in a for a in architectures):
        return load_classifier(source, role="student")
    labels = teacher.config.id2label
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(source), num_labels=len(labels), id2label=dict(labels),
            label2id={name: index for index, name in labels.items()}, attn_implementation="eager")
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError, RuntimeError) as error:
        raise UserError(f"cannot load student from '{source}': {first_line(error)}; "
                        "check that the folder holds weights, config and tokenizer files") from error
    return model, tokenizer


def embedded_tokens(model: nn.Module) -> int | None:
    """How many token ids the model embeds, or None where it does not say (CANINE reads
    characters; I-BERT's quantised embedding keeps its own fields)."""
    try:
        embedding = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        return None
    rows = getattr(embedding, "num_embeddings", None)
    weight = getattr(embedding, "weight", None)
    return rows if rows is not None else (int(weight.shape[0]) if weight is not None else None)


def check_compatible(teacher: nn.Module, teacher_tokenizer, student: nn.Module,
                     student_tokenizer) -> None:
    """Before any training: one vocabulary, one label set, and a student no deeper."""
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if len(teacher_vocab) != len(student_vocab) or teacher_vocab != student_vocab:
        differing = len(set(teacher_vocab.items()) ^ set(student_vocab.items()))
        raise UserError(f"teacher and student tokenizers differ ({len(teacher_vocab)} vs "
                        f"{len(student_vocab)} tokens, {differing} entries differ); "
                        "distillation needs one vocabulary: pick a student with the teacher's tokenizer")
    embeddings = (embedded_tokens(teacher), embedded_tokens(student))
    if None not in embeddings and embeddings[0] != embeddings[1]:
        raise UserError(f"teacher and student embed {embeddings[0]} and {embeddings[1]} token ids; "
                        "pick a student built for the teacher's vocabulary")
    teacher_labels = [teacher.config.id2label[i] for i in sorted(teacher.config.id2label)]
    student_labels = [student.config.id2label[i] for i in sorted(student.config.id2label)]
    if teacher_labels != student_labels:
        raise UserError(f"teacher labels {teacher_labels} differ from student labels "
                        f"{student_labels}; give a student trained on the same labels "
                        "(or a plain encoder, which gets the teacher's labels)")
    depth = (teacher.config.num_hidden_layers, student.config.num_hidden_layers)
    if depth[1] > depth[0]:
        raise UserError(f"the student has {depth[1]} layers and the teacher {depth[0]}; "
                        "a student must not be deeper than its teacher")
