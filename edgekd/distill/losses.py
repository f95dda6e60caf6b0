"""Distillation losses as pure tensor functions.

Shapes: logits are (batch, num_labels); labels are (batch,) with -100 for "no label".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
          temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, times T^2.

    The T^2 factor (Hinton et al., 2015) keeps the gradient scale of the soft term
    independent of T, so `alpha` means the same thing at every temperature.
    """
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="batchmean")
    return kl * temperature**2


def hard_ce(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the rows that have a label (label -100 means none); 0 if none do."""
    if not (labels != -100).any():
        return student_logits.sum() * 0.0
    return F.cross_entropy(student_logits.float(), labels, ignore_index=-100)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
            labels: torch.Tensor, *, temperature: float, alpha: float) -> torch.Tensor:
    """alpha * hard-label CE + (1 - alpha) * soft-label KD.

    Without a teacher this is plain cross-entropy; rows without labels learn from the
    soft labels alone (their CE term is simply absent).
    """
    if teacher_logits is None:
        return hard_ce(student_logits, labels)
    soft = kd_kl(student_logits, teacher_logits, temperature=temperature)
    if not (labels != -100).any():
        return soft
    return alpha * hard_ce(student_logits, labels) + (1 - alpha) * soft
