"""One frozen dataclass per stage; each field is documented and range-checked.

The CLI builds these from its options, so a config and a command line say the same thing.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

from edgekd.errors import UserError


def cache_dir(override: Path | None = None) -> Path:
    """Where edgekd keeps what it builds once (demo teachers, teacher outputs, dequantised
    GGUF models, the machine's matmul peak): `override`, else $EDGEKD_CACHE, else
    ~/.cache/edgekd."""
    if override is not None:
        return Path(override)
    return Path(os.environ.get("EDGEKD_CACHE") or Path.home() / ".cache" / "edgekd")


DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")  # what a causal-LM student's next tokens match by


def config_from(kind, options: dict, given: set[str]):
    """A config of class `kind` from the options given by name; the rest keep its defaults
    (the one place training defaults live). --freeze-embeddings sets train_embeddings off."""
    names = {field.name for field in fields(kind)}
    values = {name: options[name] for name in names & set(given)}
    if "train_embeddings" in names and "freeze_embeddings" in given:
        values["train_embeddings"] = not options["freeze_embeddings"]
    return kind(**values)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


@dataclass(frozen=True)
class DistillConfig:
    """How a student learns from its teacher."""

    epochs: int = 3  # passes over the training data
    lr: float = 1e-4  # peak AdamW learning rate, reached after warm-up
    batch_size: int = 16  # examples per optimiser step
    temperature: float = 2.0  # softens both distributions in the KL term (loss scaled by T^2)
    hard_label_weight: float = 0.5  # weight of hard-label cross-entropy; the rest goes to soft labels (KD)
    max_length: int = 128  # tokens per example after truncation
    seed: int = 0  # shuffling, dropout and initialisation
    device: str = "auto"  # auto (cuda when available), cpu or cuda
    warmup_fraction: float = 0.1  # share of steps with a linearly rising learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    max_grad_norm: float = 1.0  # gradients are clipped to this global norm
    validation_fraction: float = 0.1  # held out of --data for choosing the best epoch, when no --validation-data
    validation_rows: int = 2000  # at most this many held-out rows: the teacher runs over them before step 1
    # Intermediate losses, each added with its weight (0 = off). Widths may differ: a
    # learned projection maps student states to the teacher's width for MSE and cosine.
    hidden_mse_weight: float = 0.0  # TinyBERT hidden-state MSE between mapped layers
    hidden_cosine_weight: float = 0.0  # DistilBERT cosine loss between mapped layers
    attention_weight: float = 0.0  # TinyBERT KL between attention distributions of mapped layers
    minilm_weight: float = 0.0  # MiniLM-v2 q-q, k-k, v-v relation KL of the last layers
    minilm_relation_heads: int = 0  # heads the relations are split into; 0 = the teacher's head count
    layer_map: str = ""  # student:teacher layer pairs like "0:1,1:5"; "" = the layers a student was cut from, else uniform
    gradient_accumulation: int = 1  # each step's batch runs as this many micro-batches (same maths, less memory)
    max_steps: int = 0  # stop after this many optimiser steps (0 = --epochs decides)
    checkpoint_every: int = 200  # optimiser steps between checkpoints, also written at epoch ends (0 = none)
    teacher_cache: bool = True  # compute teacher outputs once, store them on disk (fp16), reuse them
    compile: bool = False  # torch.compile the student (worth it on GPUs for long runs)
    fsdp: bool = False  # under torchrun: teacher and student sharded across the processes (FSDP2)

    @property
    def uses_intermediate_losses(self) -> bool:
        return any(w > 0 for w in (self.hidden_mse_weight, self.hidden_cosine_weight,
                                   self.attention_weight, self.minilm_weight))

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        _check(0 < self.lr < 1, f"--lr must be between 0 and 1, got {self.lr}")
        _check(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        _check(0 < self.temperature <= 100,
               f"--temperature must be in (0, 100], got {self.temperature}")
        _check(0 <= self.hard_label_weight <= 1,
               f"--hard-label-weight must be between 0 and 1, got {self.hard_label_weight}")
        _check(8 <= self.max_length <= 8192,
               f"--max-length must be between 8 and 8192 tokens, got {self.max_length}")
        _check(self.device in ("auto", "cpu", "cuda"),
               f"--device must be auto, cpu or cuda, got '{self.device}'")
        _check(0 <= self.warmup_fraction < 1,
               f"warm-up fraction must be in [0, 1), got {self.warmup_fraction}")
        _check(self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}")
        _check(self.max_grad_norm > 0, f"max grad norm must be > 0, got {self.max_grad_norm}")
        _check(0 <= self.validation_fraction < 1,
               f"--validation-fraction must be in [0, 1), got {self.validation_fraction}")
        _check(self.validation_rows >= 1, f"--validation-rows must be at least 1, got {self.validation_rows}")
        for name in ("hidden_mse_weight", "hidden_cosine_weight", "attention_weight", "minilm_weight"):
            value = getattr(self, name)
            _check(0 <= value <= 1000 and value == value,
                   f"--{name.replace('_', '-')} must be between 0 and 1000, got {value}")
        _check(0 <= self.minilm_relation_heads <= 1024,
               f"--minilm-relation-heads must be between 0 and 1024, got {self.minilm_relation_heads}")
        _check(1 <= self.gradient_accumulation <= self.batch_size,
               f"--gradient-accumulation must be between 1 and --batch-size ({self.batch_size}), "
               f"got {self.gradient_accumulation}")
        _check(self.max_steps >= 0, f"--max-steps must be >= 0, got {self.max_steps}")
        _check(self.checkpoint_every >= 0,
               f"--checkpoint-every must be >= 0 steps, got {self.checkpoint_every}")
        _check(not (self.fsdp and self.teacher_cache), "--fsdp runs the sharded teacher inside the training loop, "
               "not over a teacher cache; add --no-teacher-cache")
        _check(not (self.fsdp and self.compile), "--fsdp and --compile cannot be combined; drop one")


@dataclass(frozen=True)
class ImageDistillConfig(DistillConfig):
    """DistillConfig and the augmentation of consistent teaching."""

    crop_scale: float = 0.0  # random-resized crop keeping at least this share of the area (0: off)
    flip: bool = False  # horizontal flips
    mixup: float = 0.0  # Beta(a, a) mixup of image pairs (0: off)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.crop_scale == 0 or 0.05 <= self.crop_scale <= 1,
               f"--crop-scale must be 0 (off) or in [0.05, 1], got {self.crop_scale}")
        _check(0 <= self.mixup <= 10, f"--mixup must be between 0 (off) and 10, got {self.mixup}")



@dataclass(frozen=True)
class LMDistillConfig:
    """How a causal-LM student learns from its teacher."""

    epochs: int = 3  # passes over the training texts
    max_steps: int = 0  # stop after this many optimiser steps (0 = --epochs decides)
    lr: float = 3e-4  # peak AdamW learning rate, reached after warm-up
    batch_size: int = 8  # texts per step
    max_length: int = 128  # tokens per text after truncation (packed: per sequence)
    pack: bool = False  # join the texts with end-of-text tokens and cut full max_length sequences
    divergence: str = "forward_kl"  # forward_kl, reverse_kl or jsd
    beta: float = 0.5  # JSD weight on the teacher (0 -> forward KL, 1 -> reverse KL)
    temperature: float = 1.0  # softens both distributions inside the divergence (times T^2)
    hard_label_weight: float = 0.5  # weight of next-token cross-entropy; the rest goes to the divergence
    top_k: int = 64  # teacher tokens cached per position; 0 runs the teacher every step (dense)
    seed: int = 0  # shuffling and initialisation
    device: str = "auto"  # auto (cuda when available), cpu or cuda
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU, where fp32 is faster)
    warmup_fraction: float = 0.1  # share of steps with a linearly rising learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    max_grad_norm: float = 1.0  # gradients are clipped to this global norm
    train_embeddings: bool = True  # False freezes token embeddings and output head: the
    # student starts from the teacher's, and on a CPU this skips the largest weight gradient
    checkpoint_every: int = 50  # steps between checkpoints in OUT.checkpoints/ (0: none)
    fsdp: bool = False  # under torchrun: teacher and student sharded across the processes (FSDP2)

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        _check(self.max_steps >= 0, f"--max-steps must be >= 0, got {self.max_steps}")
        _check(0 < self.lr < 1, f"--lr must be in (0, 1), got {self.lr}")
        _check(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        _check(2 <= self.max_length <= 1_000_000, f"--max-length must be at least 2, got {self.max_length}")
        _check(self.divergence in DIVERGENCES,
               f"--divergence {self.divergence!r} is not one of {', '.join(DIVERGENCES)}")
        _check(0 <= self.beta <= 1, f"--beta must be in [0, 1], got {self.beta}")
        _check(self.temperature > 0, f"--temperature must be positive, got {self.temperature}")
        _check(0 <= self.hard_label_weight <= 1,
               f"--hard-label-weight must be in [0, 1], got {self.hard_label_weight}")
        _check(self.top_k >= 0, f"--top-k must be 0 (dense teacher) or positive, got {self.top_k}")
        _check(self.device in ("auto", "cpu", "cuda"), f"--device must be auto, cpu or cuda, got {self.device}")
        _check(0 <= self.warmup_fraction < 1, f"--warmup-fraction must be in [0, 1), got {self.warmup_fraction}")
        _check(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        _check(self.max_grad_norm > 0, f"--max-grad-norm must be > 0, got {self.max_grad_norm}")
        _check(self.checkpoint_every >= 0, f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        _check(not (self.fsdp and self.top_k), "--fsdp runs the sharded teacher inside the training loop, not over "
               "a top-k cache; add --top-k 0")

    def total_steps(self, texts: int) -> int:
        """Optimiser steps of a run over `texts` training texts: --max-steps, else --epochs
        passes of ceil(texts / batch_size) batches."""
        return self.max_steps or self.epochs * math.ceil(texts / self.batch_size)
