"""LM losses: analytic properties, equality with F.kl_div, limits, golden values, sparse tail."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edgekd.lm.losses import (causal_lm_cross_entropy, distillation_loss, forward_kl,
                              generalised_jsd, reverse_kl, shift_for_next_token,
                              sparse_distillation_loss, with_tail)


def random_logits(seed: int, shape=(2, 5, 11)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 2


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_zero_for_identical_distributions(kind, temperature):
    logits = random_logits(0)
    loss = distillation_loss(logits, logits.clone(), kind=kind, temperature=temperature)
    assert loss.abs().item() < 1e-6


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_forward_and_reverse_kl_equal_kl_div(temperature):
    student, teacher = random_logits(1), random_logits(2)
    student_log = F.log_softmax(student / temperature, -1).flatten(0, 1)
    teacher_log = F.log_softmax(teacher / temperature, -1).flatten(0, 1)
    expected_forward = F.kl_div(student_log, teacher_log, log_target=True,
                                reduction="batchmean") * temperature**2
    expected_reverse = F.kl_div(teacher_log, student_log, log_target=True,
                                reduction="batchmean") * temperature**2
    torch.testing.assert_close(forward_kl(student, teacher, temperature=temperature), expected_forward)
    torch.testing.assert_close(reverse_kl(student, teacher, temperature=temperature), expected_reverse)


def test_jsd_is_symmetric_at_half_and_bounded_by_log_two():
    student, teacher = random_logits(3) * 5, random_logits(4) * 5
    one_way = generalised_jsd(student, teacher, beta=0.5)
    other_way = generalised_jsd(teacher, student, beta=0.5)
    torch.testing.assert_close(one_way, other_way)
    assert 0 < one_way.item() <= math.log(2)


def test_jsd_limits_are_forward_and_reverse_kl():
    student, teacher = random_logits(5).double(), random_logits(6).double()
    forward, reverse = forward_kl(student, teacher).item(), reverse_kl(student, teacher).item()
    # JSD(beta) / beta - forward KL shrinks like beta: the error falls as beta -> 0
    errors_forward = [abs(generalised_jsd(student, teacher, beta=b).item() / b - forward)
                      for b in (1e-3, 1e-4)]
    errors_reverse = [abs(generalised_jsd(student, teacher, beta=1 - b).item() / b - reverse)
                      for b in (1e-3, 1e-4)]
    assert errors_forward[1] < errors_forward[0] / 5 and errors_forward[1] < 0.01 * forward
    assert errors_reverse[1] < errors_reverse[0] / 5 and errors_reverse[1] < 0.01 * reverse
    # the end points are defined as the limits
    torch.testing.assert_close(generalised_jsd(student, teacher, beta=0.0), forward_kl(student, teacher))
    torch.testing.assert_close(generalised_jsd(student, teacher, beta=1.0), reverse_kl(student, teacher))


def test_golden_values():
    # teacher P = (1/2, 1/2), student Q = (1/4, 3/4), written as logits = log-probabilities
    teacher = torch.tensor([[[math.log(0.5), math.log(0.5)]]])
    student = torch.tensor([[[math.log(0.25), math.log(0.75)]]])
    assert forward_kl(student, teacher).item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)
    assert forward_kl(student, teacher).item() == pytest.approx(0.143841, abs=1e-6)
    assert reverse_kl(student, teacher).item() == pytest.approx(0.130812, abs=1e-6)
    assert generalised_jsd(student, teacher, beta=0.5).item() == pytest.approx(0.033822, abs=1e-6)
    # temperature 2 on these logits: P stays uniform, Q becomes (1/(1+sqrt 3), sqrt 3/(1+sqrt 3))
    q = 1 / (1 + math.sqrt(3))
    expected = 4 * (0.5 * math.log(0.5 / q) + 0.5 * math.log(0.5 / (1 - q)))
    assert forward_kl(student, teacher, temperature=2.0).item() == pytest.approx(expected, abs=1e-6)


def test_mask_excludes_tokens():
    student, teacher = random_logits(7), random_logits(8)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, :3] = True
    masked = forward_kl(student, teacher, mask=mask)
    only_kept = forward_kl(student[:1, :3], teacher[:1, :3])
    torch.testing.assert_close(masked, only_kept)
    # changing a masked-out position changes nothing
    changed = student.clone()
    changed[1] += 100
    torch.testing.assert_close(forward_kl(changed, teacher, mask=mask), masked)


def test_tail_bucket_holds_the_rest_of_the_mass():
    log_probs = torch.log(torch.tensor([0.5, 0.2, 0.1]))
    buckets = with_tail(log_probs)
    assert buckets.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    assert buckets[-1].exp().item() == pytest.approx(0.2, abs=1e-6)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_sparse_with_full_k_equals_dense(kind):
    student, teacher = random_logits(9), random_logits(10)
    teacher_log = F.log_softmax(teacher, -1)
    top_log, top_ids = teacher_log.topk(teacher.shape[-1], dim=-1)
    sparse = sparse_distillation_loss(student, top_ids, top_log, kind=kind)
    torch.testing.assert_close(sparse, distillation_loss(student, teacher, kind=kind), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_sparse_is_a_lower_bound_that_tightens_with_k(kind):
    student, teacher = random_logits(11), random_logits(12)
    teacher_log = F.log_softmax(teacher / 2, -1)
    dense = distillation_loss(student, teacher, kind=kind, temperature=2.0).item()
    values = []
    for k in (1, 3, 6, 11):
        top_log, top_ids = teacher_log.topk(k, dim=-1)
        values.append(sparse_distillation_loss(student, top_ids, top_log, kind=kind,
                                               temperature=2.0).item())
    assert all(v <= dense + 1e-5 for v in values)
    assert values == sorted(values) and values[-1] == pytest.approx(dense, rel=1e-4)


def test_sparse_is_zero_when_student_matches_teacher():
    logits = random_logits(13)
    top_log, top_ids = F.log_softmax(logits, -1).topk(4, dim=-1)
    assert sparse_distillation_loss(logits, top_ids, top_log, kind="jsd").abs().item() < 1e-6


def test_cross_entropy_after_shift_skips_padding_and_prompt():
    logits = random_logits(14)
    labels = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(0))
    labels[0, :2] = -100  # prompt
    labels[1, 4] = -100  # padding
    shifted, targets, mask = shift_for_next_token(logits, labels)
    assert shifted.shape == (2, 4, 11) and mask.sum().item() == 3 + 3
    expected = F.cross_entropy(shifted[mask], targets[mask])
    torch.testing.assert_close(causal_lm_cross_entropy(shifted, targets), expected)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_sparse_loss_gradient_stays_finite_when_the_top_k_holds_all_the_mass(kind):
    """A confident student puts all its float32 probability on the teacher's top k: the tail
    is log(0) there, and neither the loss nor its gradient may become nan or inf."""
    logits = torch.zeros(2, 3, 50)
    logits[..., 7] = 200.0  # float32 softmax: exactly 1 on token 7
    logits.requires_grad_(True)
    top_ids = torch.arange(8).expand(2, 3, 8)
    teacher = torch.log_softmax(torch.randn(2, 3, 8), dim=-1) - 0.1  # teacher keeps a tail
    loss = sparse_distillation_loss(logits, top_ids, teacher, kind=kind)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_log_one_minus_exp_gradient_is_finite_at_both_ends():
    from edgekd.lm.losses import log_one_minus_exp

    x = torch.tensor([-1e-6, -0.5, -0.7, -50.0], requires_grad=True)
    log_one_minus_exp(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.allclose(log_one_minus_exp(x.detach()), torch.log(1 - torch.exp(x.detach().double())).float(),
                          rtol=1e-4)
