import math

import pytest
import torch
import torch.nn.functional as F

from edgekd.distill.losses import hard_ce, kd_kl, kd_loss


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
