"""Losses over next-token distributions, as pure tensor functions.

Shapes: logits are (batch, tokens, vocab), already aligned so that position t holds the
prediction of token t + 1; `mask` is (batch, tokens) with 1 where that prediction counts
(not padding, not prompt). Every loss averages over counted tokens only.

The temperature is applied inside each loss to both distributions, and divergences are
multiplied by T^2 (Hinton et al., 2015) so their gradient scale does not depend on T.

Divergences (teacher distribution P, student distribution Q):
  forward KL   KL(P || Q)   mass-covering; what classic KD minimises
  reverse KL   KL(Q || P)   mode-seeking (MiniLLM)
  JSD(beta)    beta * KL(P || M) + (1 - beta) * KL(Q || M),  M = beta * P + (1 - beta) * Q
               (GKD, Agarwal et al. 2024). JSD(beta) / beta -> forward KL as beta -> 0 and
               JSD(beta) / (1 - beta) -> reverse KL as beta -> 1; beta = 0 and beta = 1 are
               defined as those limits, as in TRL.

A sparse teacher (its top-k log-probabilities, see edgekd/training/cache.py) is compared on the
k cached tokens plus one "tail" bucket holding all the remaining probability, for both
teacher and student. The tail is neither dropped nor spread over the top-k: the divergence
of these (k + 1)-bucket distributions is exact when the teacher's tail is empty and a lower
bound of the full divergence otherwise (merging outcomes never increases an f-divergence).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edgekd.config import DIVERGENCES  # one list of names: the config checks it


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits are upcast (log-softmax over a large vocabulary needs it); fp64 stays."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _kl_per_token(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis from log-probabilities; 0 * log 0 counts as 0."""
    p = p_log.exp()
    return torch.where(p > 0, p * (p_log - q_log), torch.zeros_like(p)).sum(-1)


def divergence_per_token(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, *,
                         kind: str, beta: float = 0.5) -> torch.Tensor:
    """(batch, tokens) divergence between two distributions given as log-probabilities."""
    if kind == "forward_kl":
        return _kl_per_token(teacher_log_probs, student_log_probs)
    if kind == "reverse_kl":
        return _kl_per_token(student_log_probs, teacher_log_probs)
    if kind != "jsd":
        raise ValueError(f"unknown divergence {kind!r}; choose one of {', '.join(DIVERGENCES)}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return _kl_per_token(teacher_log_probs, student_log_probs)
    if beta == 1.0:
        return _kl_per_token(student_log_probs, teacher_log_probs)
    mixture_log_probs = torch.logsumexp(torch.stack(
        [teacher_log_probs + math.log(beta), student_log_probs + math.log(1 - beta)]), dim=0)
    return (beta * _kl_per_token(teacher_log_probs, mixture_log_probs)
            + (1 - beta) * _kl_per_token(student_log_probs, mixture_log_probs))


def masked_mean(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of a (batch, tokens) tensor over the tokens where mask is 1 (0 when none are)."""
    if mask is None:
        return per_token.mean()
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                      kind: str = "forward_kl", beta: float = 0.5, temperature: float = 1.0,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """Divergence of the temperature-softened next-token distributions, times T^2."""
    student_log_probs = F.log_softmax(_at_least_float32(student_logits) / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(_at_least_float32(teacher_logits) / temperature, dim=-1)
    per_token = divergence_per_token(student_log_probs, teacher_log_probs, kind=kind, beta=beta)
    return masked_mean(per_token, mask) * temperature**2


def forward_kl(student_logits, teacher_logits, *, temperature=1.0, mask=None) -> torch.Tensor:
    """KL(teacher || student), temperature inside, times T^2."""
    return distillation_loss(student_logits, teacher_logits, kind="forward_kl",
                             temperature=temperature, mask=mask)


def reverse_kl(student_logits, teacher_logits, *, temperature=1.0, mask=None) -> torch.Tensor:
    """KL(student || teacher), temperature inside, times T^2."""
    return distillation_loss(student_logits, teacher_logits, kind="reverse_kl",
                             temperature=temperature, mask=mask)


def generalised_jsd(student_logits, teacher_logits, *, beta=0.5, temperature=1.0,
                    mask=None) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence with weight `beta` on the teacher."""
    return distillation_loss(student_logits, teacher_logits, kind="jsd", beta=beta,
                             temperature=temperature, mask=mask)


def log_one_minus_exp(log_mass: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stable at both ends (Maechler 2012).

    Each branch only ever sees inputs it is finite on: torch.where passes gradients through
    both branches, and an inf in the unused one would turn the gradient into nan.
    """
    log_mass = log_mass.clamp(max=0.0)
    near_zero = log_mass > -math.log(2)
    from_expm1 = torch.log(-torch.expm1(torch.where(near_zero, log_mass, -1.0)))
    from_log1p = torch.log1p(-torch.exp(torch.where(near_zero, -1.0, log_mass)))
    return torch.where(near_zero, from_expm1, from_log1p)


# The tail bucket never drops below this probability: float32 rounding can make the top-k
# mass reach 1, and a log(0) tail would turn the loss (and its gradient) into inf/nan.
TAIL_FLOOR = 1e-10


def with_tail(top_log_probs: torch.Tensor) -> torch.Tensor:
    """(..., k) log-probabilities of the top-k tokens -> (..., k + 1) with the tail bucket last."""
    # A confident model puts all its float32 mass on the top k: cap the mass at 1 - floor
    # first, so the tail's log stays finite and so does its gradient.
    log_mass = torch.logsumexp(top_log_probs, dim=-1, keepdim=True).clamp(max=math.log1p(-TAIL_FLOOR))
    tail = log_one_minus_exp(log_mass)
    return torch.cat([top_log_probs, tail.clamp(min=math.log(TAIL_FLOOR))], dim=-1)


def sparse_distillation_loss(student_logits: torch.Tensor, teacher_top_ids: torch.Tensor,
                             teacher_top_log_probs: torch.Tensor, *, kind: str = "forward_kl",
                             beta: float = 0.5, temperature: float = 1.0,
                             mask: torch.Tensor | None = None) -> torch.Tensor:
    """Divergence against a sparse teacher, on the top-k tokens plus the tail bucket, times T^2.

    `teacher_top_ids` (batch, tokens, k) and `teacher_top_log_probs` (batch, tokens, k) are
    the teacher's top-k tokens and their log-probabilities at `temperature` (the cache is
    built at the temperature it is used with).
    """
    student_log_probs = F.log_softmax(_at_least_float32(student_logits) / temperature, dim=-1)
    student_top = student_log_probs.gather(-1, teacher_top_ids.long())
    student_buckets = with_tail(student_top)
    teacher_buckets = with_tail(_at_least_float32(teacher_top_log_probs))
    per_token = divergence_per_token(student_buckets, teacher_buckets, kind=kind, beta=beta)
    return masked_mean(per_token, mask) * temperature**2


def causal_lm_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy; `targets` (batch, tokens) aligned with logits, -100 = skip."""
    if not (targets != -100).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align (batch, seq, vocab) logits with the tokens they predict.

    Returns logits (batch, seq - 1, vocab), targets (batch, seq - 1) and the mask of
    counted predictions (targets that are not -100: padding and prompt are -100).
    """
    targets = labels[:, 1:]
    return logits[:, :-1], targets, targets != -100
