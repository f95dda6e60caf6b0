import math

import pytest
import torch
import torch.nn.functional as F

from edgekd.training.losses import hard_ce, kd_kl, kd_loss


def _logits(seed, shape=(8, 5)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
def test_kd_kl_is_zero_for_identical_logits(temperature):
    logits = _logits(0)
    assert kd_kl(logits, logits.clone(), temperature=temperature).item() == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kd_kl_equals_torch_kl_div_times_t_squared(temperature):
    student, teacher = _logits(1), _logits(2)
    expected = F.kl_div(F.log_softmax(student / temperature, -1), F.softmax(teacher / temperature, -1),
                        reduction="batchmean") * temperature**2
    assert kd_kl(student, teacher, temperature=temperature).item() == pytest.approx(expected.item(), rel=1e-5)


def test_kd_kl_golden_value():
    student = torch.tensor([[1.0, 2.0, 3.0]])
    teacher = torch.tensor([[3.0, 2.0, 1.0]])
    # KL(p || q) with p = softmax(teacher/2), q = softmax(student/2), times 4, by hand:
    p = torch.softmax(teacher / 2, -1)
    q = torch.softmax(student / 2, -1)
    by_hand = 4 * float((p * (p / q).log()).sum())
    assert kd_kl(student, teacher, temperature=2.0).item() == pytest.approx(by_hand, rel=1e-6)
    # log(p/q) is +1, 0, -1 per class here, so the value is 4 * (p0 - p2):
    assert by_hand == pytest.approx(1.28064, abs=1e-4)


def test_t_squared_keeps_gradient_scale_at_high_temperature():
    # Without T^2 the soft-label gradient shrinks like 1/T^2; with it, it stays put.
    student, teacher = _logits(3).requires_grad_(), _logits(4)
    norms = []
    for temperature in (10.0, 20.0):
        student.grad = None
        kd_kl(student, teacher, temperature=temperature).backward()
        norms.append(student.grad.norm().item())
    assert norms[0] == pytest.approx(norms[1], rel=0.05)


def test_hard_ce_ignores_unlabelled_rows_and_is_zero_without_labels():
    logits, labels = _logits(5, (4, 3)), torch.tensor([0, -100, 2, -100])
    expected = F.cross_entropy(logits[[0, 2]], labels[[0, 2]])
    assert hard_ce(logits, labels).item() == pytest.approx(expected.item())
    assert hard_ce(logits, torch.full((4,), -100)).item() == 0.0


def test_kd_loss_mixes_by_alpha_and_falls_back_to_soft_only():
    student, teacher, labels = _logits(6), _logits(7), torch.arange(8) % 5
    soft = kd_kl(student, teacher, temperature=2.0)
    hard = F.cross_entropy(student, labels)
    mixed = kd_loss(student, teacher, labels, temperature=2.0, alpha=0.3)
    assert mixed.item() == pytest.approx((0.3 * hard + 0.7 * soft).item(), rel=1e-6)
    unlabelled = kd_loss(student, teacher, torch.full((8,), -100), temperature=2.0, alpha=0.3)
    assert unlabelled.item() == pytest.approx(soft.item(), rel=1e-6)
    assert kd_loss(student, None, labels, temperature=2.0, alpha=0.3).item() == pytest.approx(hard.item())
    assert math.isfinite(mixed.item())


# ---------------------------------------------------------------------------- intermediate losses

from edgekd.training.losses import (attention_kl, hidden_cosine, hidden_mse, minilm_relations,
                                   relation_log_probs)

MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # second row: two padded tokens


def _golden_inputs():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 8, generator=generator), torch.randn(2, 5, 8, generator=generator)
    student_attention = torch.softmax(torch.randn(2, 2, 5, 5, generator=generator), -1)
    teacher_attention = torch.softmax(torch.randn(2, 2, 5, 5, generator=generator), -1)
    student_qkv = tuple(torch.randn(2, 5, 8, generator=generator) for _ in range(3))
    teacher_qkv = tuple(torch.randn(2, 5, 12, generator=generator) for _ in range(3))
    return student, teacher, student_attention, teacher_attention, student_qkv, teacher_qkv


def test_intermediate_losses_golden_values():
    student, teacher, student_attention, teacher_attention, student_qkv, teacher_qkv = _golden_inputs()
    assert hidden_mse(student, teacher, MASK).item() == pytest.approx(2.2834463, rel=1e-5)
    assert hidden_cosine(student, teacher, MASK).item() == pytest.approx(1.1359144, rel=1e-5)
    assert attention_kl(student_attention, teacher_attention, MASK).item() == pytest.approx(0.6895836, rel=1e-5)
    assert minilm_relations(student_qkv, teacher_qkv, MASK, relation_heads=2).item() == pytest.approx(
        0.3765365, rel=1e-5)


def test_intermediate_losses_are_zero_on_identical_inputs():
    student, _, attention, _, qkv, _ = _golden_inputs()
    assert hidden_mse(student, student.clone(), MASK).item() == 0
    assert hidden_cosine(student, student.clone(), MASK).item() == pytest.approx(0, abs=1e-6)
    assert attention_kl(attention, attention.clone(), MASK).item() == pytest.approx(0, abs=1e-6)
    assert minilm_relations(qkv, tuple(x.clone() for x in qkv), MASK, relation_heads=4).item() == (
        pytest.approx(0, abs=1e-6))


def test_hidden_mse_equals_torch_mse_without_padding_and_ignores_padded_tokens():
    student, teacher, *_ = _golden_inputs()
    full = torch.ones(2, 5, dtype=torch.long)
    assert hidden_mse(student, teacher, full).item() == pytest.approx(F.mse_loss(student, teacher).item(), rel=1e-6)
    changed = student.clone()
    changed[1, 3:] += 100  # padded positions of row 2
    assert hidden_mse(changed, teacher, MASK).item() == pytest.approx(hidden_mse(student, teacher, MASK).item())


def test_hidden_cosine_is_scale_invariant_and_two_for_opposite_states():
    student, teacher, *_ = _golden_inputs()
    assert hidden_cosine(3 * student, teacher, MASK).item() == pytest.approx(
        hidden_cosine(student, teacher, MASK).item(), rel=1e-5)
    assert hidden_cosine(-teacher, teacher, MASK).item() == pytest.approx(2.0, rel=1e-6)


def test_attention_kl_equals_torch_kl_div_per_query_row():
    _, _, student_attention, teacher_attention, *_ = _golden_inputs()
    full = torch.ones(2, 5, dtype=torch.long)
    per_row = F.kl_div(student_attention.log(), teacher_attention, reduction="none").sum(-1)
    assert attention_kl(student_attention, teacher_attention, full).item() == pytest.approx(
        per_row.mean().item(), rel=1e-5)


def test_attention_kl_with_different_head_counts_compares_head_averages():
    _, _, student_attention, teacher_attention, *_ = _golden_inputs()
    teacher_four_heads = torch.cat([teacher_attention, teacher_attention], dim=1)
    value = attention_kl(student_attention, teacher_four_heads, MASK)
    expected = attention_kl(student_attention.mean(1, keepdim=True),
                            teacher_attention.mean(1, keepdim=True), MASK)
    assert math.isfinite(value.item()) and value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_relations_depend_only_on_each_heads_gram_matrix():
    # Rotating every relation head by an orthogonal matrix keeps X X^T, so the loss is 0:
    # this is why MiniLM relations compare models of different widths and head counts.
    *_, qkv, _ = _golden_inputs()
    rotation = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(1)))[0]
    rotated = tuple(torch.cat([x[..., :4] @ rotation, x[..., 4:] @ rotation], dim=-1) for x in qkv)
    assert minilm_relations(rotated, qkv, MASK, relation_heads=2).item() == pytest.approx(0, abs=1e-5)


def test_relations_mask_padded_keys_and_work_across_widths():
    *_, student_qkv, teacher_qkv = _golden_inputs()
    log_probs = relation_log_probs(student_qkv[0], MASK, relation_heads=2)
    assert log_probs.shape == (2, 2, 5, 5)
    assert log_probs[1, :, :, 3:].exp().max().item() == 0  # padded keys get no probability
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 2, 5))
    for heads in (1, 2, 4):  # student width 8, teacher width 12
        assert math.isfinite(minilm_relations(student_qkv, teacher_qkv, MASK, relation_heads=heads).item())
    with pytest.raises(ValueError, match="not divisible"):
        relation_log_probs(student_qkv[0], MASK, relation_heads=3)


def test_kd_loss_with_alpha_one_is_pure_cross_entropy_even_without_labels():
    student, teacher = _logits(8), _logits(9)
    assert kd_loss(student, teacher, torch.full((8,), -100), temperature=2.0, alpha=1.0).item() == 0.0
