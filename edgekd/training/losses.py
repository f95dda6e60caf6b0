"""Distillation losses as pure tensor functions.

Shapes: logits are (batch, num_labels); labels are (batch,) with -100 for "no label";
hidden states are (batch, tokens, width); attention probabilities are
(batch, heads, tokens, tokens); `attention_mask` is (batch, tokens) with 1 for real tokens.
Every loss averages over real tokens only, so padding never teaches anything.
"""

from __future__ import annotations

import math

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

    Without a teacher, or with alpha 1, this is plain cross-entropy (zero on a batch
    without labels). Otherwise a batch without labels learns from the soft labels alone.
    """
    if teacher_logits is None or alpha == 1:
        return hard_ce(student_logits, labels)
    soft = kd_kl(student_logits, teacher_logits, temperature=temperature)
    if not (labels != -100).any():
        return soft
    return alpha * hard_ce(student_logits, labels) + (1 - alpha) * soft


def _token_mean(per_token: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of a (batch, tokens) tensor over the real tokens."""
    mask = attention_mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
               attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error per hidden unit over real tokens (TinyBERT's hidden-state loss).

    The student's states must already be projected to the teacher's width (the learned
    projection lives in the training objective, not here, so this stays a pure function).
    """
    per_token = (student_hidden.float() - teacher_hidden.float()).pow(2).mean(dim=-1)
    return _token_mean(per_token, attention_mask)


def hidden_cosine(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                  attention_mask: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity of hidden states per real token (DistilBERT's L_cos)."""
    cosine = F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1, eps=1e-8)
    return _token_mean(1 - cosine, attention_mask)


def attention_kl(student_attention: torch.Tensor, teacher_attention: torch.Tensor,
                 attention_mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of attention distributions per query row (TinyBERT-style).

    Both are (batch, heads, tokens, tokens) softmax outputs. When head counts differ,
    each model's heads are averaged first (a per-head pairing would be arbitrary).
    Rows of padded queries are skipped; padded keys carry ~0 probability in both.
    """
    if student_attention.shape[1] != teacher_attention.shape[1]:
        student_attention = student_attention.mean(dim=1, keepdim=True)
        teacher_attention = teacher_attention.mean(dim=1, keepdim=True)
    return _distribution_kl(student_attention.float().clamp(min=1e-12).log(),
                            teacher_attention.float().clamp(min=1e-12).log(), attention_mask)


def _distribution_kl(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor,
                     attention_mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) summed over keys, averaged over heads and real query rows.

    Inputs are (batch, heads, tokens, tokens) log-probabilities over the last axis.
    """
    key_mask = attention_mask[:, None, None, :].bool()
    teacher_probs = teacher_log_probs.exp()
    terms = teacher_probs * (teacher_log_probs - student_log_probs)
    per_row = terms.masked_fill(~key_mask, 0.0).sum(dim=-1).mean(dim=1)  # (batch, tokens)
    return _token_mean(per_row, attention_mask)


def relation_log_probs(states: torch.Tensor, attention_mask: torch.Tensor, *,
                       relation_heads: int) -> torch.Tensor:
    """MiniLM-v2 self-attention relations: log softmax(X_h X_h^T / sqrt(d_h)) per head.

    `states` is one of the query, key or value projections, (batch, tokens, width);
    it is split into `relation_heads` heads of width/relation_heads units, whatever the
    model's own head count, which is what lets teacher and student widths differ.
    Returns (batch, relation_heads, tokens, tokens), padded keys masked out.
    """
    batch, tokens, width = states.shape
    if width % relation_heads:
        raise ValueError(f"width {width} is not divisible by {relation_heads} relation heads")
    head_width = width // relation_heads
    heads = states.float().view(batch, tokens, relation_heads, head_width).transpose(1, 2)
    scores = heads @ heads.transpose(-1, -2) / math.sqrt(head_width)
    key_mask = attention_mask[:, None, None, :].bool()
    scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def minilm_relations(student_qkv: tuple[torch.Tensor, ...], teacher_qkv: tuple[torch.Tensor, ...],
                     attention_mask: torch.Tensor, *, relation_heads: int) -> torch.Tensor:
    """MiniLM-v2 loss: mean over query-query, key-key and value-value relations of
    KL(teacher relation || student relation).

    `student_qkv` and `teacher_qkv` are (query, key, value) projections of one layer,
    each (batch, tokens, width); the two widths may differ, and so may head counts.
    """
    losses = []
    for student_states, teacher_states in zip(student_qkv, teacher_qkv, strict=True):
        student_relation = relation_log_probs(student_states, attention_mask,
                                              relation_heads=relation_heads)
        teacher_relation = relation_log_probs(teacher_states, attention_mask,
                                              relation_heads=relation_heads)
        losses.append(_distribution_kl(student_relation, teacher_relation, attention_mask))
    return torch.stack(losses).mean()
