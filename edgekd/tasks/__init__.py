"""Tasks: what a model does, read from its config, and which stages' pieces differ by it.

Every stage (distill, export, bench) is written once; a task says only what truly differs
between a text classifier and a decoder language model: which Auto class loads it, how
rows become batches, what the student matches, how an export is checked and what the bench
reports. `TASKS` is the one place a task is named; `detect` reads it from a teacher or
student (its config.json `architectures`, or a .gguf file), so `--task` is rarely needed.

Adding a task is one package beside edgekd/lm and edgekd/vision and one entry below
(docs/architecture.md lists what an adapter provides).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edgekd.config import DistillConfig, ImageDistillConfig, LMDistillConfig
from edgekd.errors import UserError


@dataclass(frozen=True)
class Task:
    """One kind of model edgekd distils, exports and benches."""

    name: str  # as typed after --task and written in manifests and reports
    summary: str  # one line for --help and `edgekd targets`
    auto_class: str  # the transformers Auto class that loads teachers and students
    architecture_endings: tuple[str, ...]  # config.architectures entries of this task end so
    preprocessor_class: str = "AutoTokenizer"  # what turns its inputs into tensors, saved beside it
    # per command, the options this task reads that some other task does not (an option every
    # task reads is listed nowhere); an option of another task is refused by name
    options: dict = field(default_factory=dict)
    # per command, this task's own defaults of options no config holds (edgekd.api.DEFAULTS has the rest)
    defaults: dict = field(default_factory=dict)
    training_config: type = DistillConfig  # the frozen config (edgekd/config.py) holding its training defaults
    inputs: str = "tokens"  # what its graphs take: tokens, or pixels
    contract: str = "classifier"  # what comes out: classifier logits, or a decoder's next tokens (key/value cache)

    def matches(self, config: dict) -> bool:
        """Whether a config.json (as a dict) describes a model of this task."""
        return any(a.endswith(self.architecture_endings) for a in config.get("architectures") or [])


# distill options that not every task reads
_CLASSIFIER_TRAINING = ("validation_data", "validation_split", "validation_fraction", "validation_rows",
                        "label_column", "hidden_mse_weight", "attention_weight", "layer_map", "compile",
                        "teacher_cache", "trust_remote_code")
_TEXT_INPUTS = ("text_column", "max_length", "trim_vocab", "trim_vocab_min_count", "latency_budget_ms",
                "budget_target", "sequence_length", "student_init")

TEXT_CLASSIFICATION = Task(
    name="text-classification", summary="sequence classifiers (BERT, DistilBERT, RoBERTa, DeBERTa-v2, ALBERT, ModernBERT, ...)",
    auto_class="AutoModelForSequenceClassification", architecture_endings=("ForSequenceClassification",),
    options={"distill": frozenset({*_CLASSIFIER_TRAINING, *_TEXT_INPUTS, "text_pair_column", "gradient_accumulation",
                                   "hidden_cosine_weight", "minilm_weight", "minilm_relation_heads",
                                   "trim_vocab_max_drop", "fine_tune_teacher", "augment"}),
             "export": frozenset({"calibration_data", "label_column", "text_pair_column", "exporter", "verify",
                                  "text_column", "max_length", "with_tokenizer"}),
             "bench": frozenset({"label_column", "text_pair_column", "sequence_length", "threads", "repeats",
                                 "throughput_batch", "memory", "roofline", "max_accuracy_drop", "plot",
                                 "trust_remote_code", "text_column", "max_length"}),
             "demo": frozenset({"cache_dir", "limit", "max_length", "repeats"})})
CAUSAL_LM = Task(
    name="causal-lm", summary="decoder language models (Llama, SmolLM2, Qwen2, GPT-2, ...)",
    auto_class="AutoModelForCausalLM", architecture_endings=("ForCausalLM", "LMHeadModel"),
    options={"distill": frozenset({*_TEXT_INPUTS, "prompt_column", "divergence", "beta", "top_k", "freeze_embeddings",
                                   "pack"}),
             "export": frozenset({"max_perplexity_ratio", "text_column", "max_length", "with_tokenizer"}),
             "bench": frozenset({"new_tokens", "rounds", "max_perplexity_ratio", "text_column", "max_length"}),
             "demo": frozenset({"student_layers", "overwrite"})},
    defaults={"export": {"targets": ("onnx-fp32", "onnx-int8", "onnx-int4"), "max_length": 512},
              "demo": {"out": "runs/lm-demo"}},
    training_config=LMDistillConfig,
    contract="decoder")

IMAGE_CLASSIFICATION = Task(
    name="image-classification", summary="image classifiers (ViT, ConvNeXt, ResNet, MobileNetV2, ...)",
    auto_class="AutoModelForImageClassification", architecture_endings=("ForImageClassification",),
    preprocessor_class="AutoImageProcessor",
    options={"distill": frozenset({*_CLASSIFIER_TRAINING, "image_column", "crop_scale", "flip", "mixup"}),
             "export": frozenset({"calibration_data", "label_column", "verify", "image_column"}),
             "bench": frozenset({"label_column", "threads", "repeats", "throughput_batch", "memory", "roofline",
                                 "max_accuracy_drop", "plot", "trust_remote_code", "image_column"}),
             "demo": frozenset({"cache_dir", "limit", "repeats"})},
    defaults={"demo": {"out": "runs/image-demo"}}, training_config=ImageDistillConfig, inputs="pixels")

TASKS = {task.name: task for task in (TEXT_CLASSIFICATION, CAUSAL_LM, IMAGE_CLASSIFICATION)}
DEFAULT_TASK = TEXT_CLASSIFICATION.name


def refuse_options_of_other_tasks(command: str, given, task: str) -> None:
    """One line naming the first option given that `task` does not read for `command` but
    another task does (the first such task in TASKS is named): rather refused than ignored."""
    reads = TASKS[task].options.get(command, frozenset())
    for name in given:
        owner = next((other.name for other in TASKS.values() if name in other.options.get(command, ())), None)
        if owner is not None and name not in reads:
            raise UserError(f"--{name.replace('_', '-')} is an option of --task {owner} only; "
                            f"drop it, or pass --task {owner}")


def is_decoder(name: str | None) -> bool:
    """Whether task `name` makes decoders (a key/value-cache graph; next tokens out)."""
    return name in TASKS and TASKS[name].contract == "decoder"


def check_task(name: str) -> Task:
    """The task named by --task, or one line listing the known names."""
    if name not in TASKS:
        raise UserError(f"--task must be one of {', '.join(TASKS)}, got '{name}'")
    return TASKS[name]


def task_of_config(config: dict) -> str | None:
    """The task a config.json describes: by `architectures`, else (none saved) by model type:
    a decoder family (a causal-LM head and no masked-LM one) is a causal LM, anything else
    with a model type is taken for an encoder classifier."""
    for task in TASKS.values():
        if task.matches(config):
            return task.name
    if config.get("architectures"):
        return None  # a model of no task edgekd knows (a masked LM, a seq2seq model, ...)
    model_type = config.get("model_type")
    if model_type is None:
        return None
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    if model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        return IMAGE_CLASSIFICATION.name
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return CAUSAL_LM.name
    return TEXT_CLASSIFICATION.name


def read_config(source: str | Path) -> dict | None:
    """config.json of a local model folder, or None (not a folder, no readable config)."""
    try:
        return json.loads((Path(source) / "config.json").read_text())
    except (OSError, ValueError):
        return None


def hub_config(source: str) -> dict | None:
    """config.json of a hub model id (`owner/name`), from the local hub cache when it is there,
    else from the hub; None when it cannot be had (the model's loader then says why)."""
    from transformers import AutoConfig

    for local_files_only in (True, False):
        try:
            return AutoConfig.from_pretrained(source, local_files_only=local_files_only).to_dict()
        except Exception:  # noqa: BLE001 - not cached, offline, unknown id: the loader reports it
            continue
    return None


def detect(*sources, hub: bool = False) -> str | None:
    """The task of the first source that is a local model folder, a .gguf file or (with
    `hub`, for teachers, which may be hub ids) a hub id whose config can be read; None when
    no source tells."""
    for source in sources:
        if source is None:
            continue
        if str(source).lower().endswith(".gguf"):
            return CAUSAL_LM.name
        config = read_config(source)
        if config is None and hub and isinstance(source, str) and _looks_like_hub_id(source):  # Paths: folders
            config = hub_config(str(source))
        if config is not None:
            return task_of_config(config)
    return None


def _looks_like_hub_id(text: str) -> bool:
    """`owner/name`: one slash, not a path that exists or starts like one."""
    return (text.count("/") == 1 and not text.startswith((".", "/", "~")) and not Path(text).exists()
            and all(part for part in text.split("/")))


def resolve(task: str | None, *sources, hub: bool = False) -> str:
    """--task as given (after checking it fits the model folders), else the detected task."""
    detected = detect(*sources, hub=hub)
    if task is None:
        return detected or DEFAULT_TASK
    check_task(task)
    if detected is not None and detected != task:
        folder = next(str(s) for s in sources if s is not None and detect(s, hub=hub) is not None)
        raise UserError(f"{folder} holds a {detected} model, not a {task} one; "
                        f"pass --task {detected} (or leave --task out)")
    return task
