"""One frozen dataclass per stage; each field is documented and range-checked.

The CLI builds these from its options, so a config and a command line say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekd.errors import UserError


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
    alpha: float = 0.5  # weight of hard-label cross-entropy; (1 - alpha) goes to soft labels
    max_length: int = 128  # tokens per example after truncation
    seed: int = 0  # shuffling, dropout and initialisation
    device: str = "auto"  # auto (cuda when available), cpu or cuda
    warmup_fraction: float = 0.1  # share of steps with a linearly rising learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    max_grad_norm: float = 1.0  # gradients are clipped to this global norm
    validation_fraction: float = 0.1  # held out of --data for choosing the best epoch, when no --validation-data

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        _check(0 < self.lr < 1, f"--lr must be between 0 and 1, got {self.lr}")
        _check(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        _check(0 < self.temperature <= 100,
               f"--temperature must be in (0, 100], got {self.temperature}")
        _check(0 <= self.alpha <= 1, f"--alpha must be between 0 and 1, got {self.alpha}")
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
