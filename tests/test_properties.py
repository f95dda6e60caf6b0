"""Property-based tests: the losses and the option parsing hold for any input, not just ours."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekd.config import DistillConfig
from edgekd.training.losses import (attention_kl, hidden_cosine, hidden_mse, kd_kl, kd_loss,
                                   minilm_relations)
from edgekd.errors import UserError
from edgekd.models import parse_layers

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def logits_pairs(draw):
    batch, classes = draw(st.integers(1, 6)), draw(st.integers(2, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.floats(0.01, 50.0))
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, classes, generator=generator) * scale,
            torch.randn(batch, classes, generator=generator) * scale)


@FAST
@given(pair=logits_pairs(), temperature=st.floats(0.1, 20.0))
def test_kd_kl_is_finite_non_negative_and_zero_at_identity(pair, temperature):
    student, teacher = pair
    value = kd_kl(student, teacher, temperature=temperature).item()
    assert math.isfinite(value) and value >= -1e-5
    assert kd_kl(teacher, teacher, temperature=temperature).item() == pytest.approx(0, abs=1e-4)


@FAST
@given(pair=logits_pairs(), temperature=st.floats(0.5, 10.0), alpha=st.floats(0.0, 1.0),
       labelled=st.lists(st.booleans(), min_size=6, max_size=6))
def test_kd_loss_is_finite_and_non_negative_for_any_label_pattern(pair, temperature, alpha, labelled):
    student, teacher = pair
    labels = torch.tensor([i % student.shape[1] if labelled[i] else -100
                           for i in range(student.shape[0])])
    value = kd_loss(student, teacher, labels, temperature=temperature, alpha=alpha).item()
    assert math.isfinite(value) and value >= -1e-5


@st.composite
def hidden_batches(draw):
    batch, tokens, width = draw(st.integers(1, 3)), draw(st.integers(1, 8)), draw(st.integers(2, 16))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    mask = torch.ones(batch, tokens, dtype=torch.long)
    for row in range(batch):
        mask[row, draw(st.integers(1, tokens)):] = 0  # at least one real token per row
    return (torch.randn(batch, tokens, width, generator=generator),
            torch.randn(batch, tokens, width, generator=generator), mask)


@FAST
@given(batch=hidden_batches())
def test_hidden_losses_are_finite_non_negative_and_zero_at_identity(batch):
    student, teacher, mask = batch
    for loss in (hidden_mse, hidden_cosine):
        value = loss(student, teacher, mask).item()
        assert math.isfinite(value) and value >= -1e-6
        assert loss(teacher, teacher.clone(), mask).item() == pytest.approx(0, abs=1e-5)


@FAST
@given(batch=hidden_batches(), heads=st.sampled_from([1, 2]))
def test_attention_and_relation_losses_are_finite_and_zero_at_identity(batch, heads):
    student, teacher, mask = batch
    tokens = student.shape[1]
    padded_keys = (mask == 0)[:, None, None, :]  # a model gives padded keys zero attention
    attention_t = torch.softmax(torch.randn(student.shape[0], heads, tokens, tokens)
                                .masked_fill(padded_keys, float("-inf")), -1)
    attention_s = torch.softmax(torch.randn(student.shape[0], heads, tokens, tokens)
                                .masked_fill(padded_keys, float("-inf")), -1)
    value = attention_kl(attention_s, attention_t, mask).item()
    assert math.isfinite(value) and value >= -1e-5
    assert attention_kl(attention_t, attention_t.clone(), mask).item() == pytest.approx(0, abs=1e-5)
    width = student.shape[-1] - student.shape[-1] % 2
    s, t = student[..., :width], teacher[..., :width]
    relation = minilm_relations((s, s, s), (t, t, t), mask, relation_heads=2).item()
    assert math.isfinite(relation) and relation >= -1e-5
    assert minilm_relations((t, t, t), (t, t, t), mask, relation_heads=2).item() == pytest.approx(0, abs=1e-4)


@FAST
@given(epochs=st.integers(-5, 5), lr=st.floats(-1, 2, allow_nan=False),
       batch_size=st.integers(-3, 64), temperature=st.floats(-5, 200, allow_nan=False),
       alpha=st.floats(-1, 2, allow_nan=False))
def test_config_accepts_exactly_the_valid_ranges(epochs, lr, batch_size, temperature, alpha):
    valid = epochs >= 1 and 0 < lr < 1 and batch_size >= 1 and 0 < temperature <= 100 and 0 <= alpha <= 1
    try:
        DistillConfig(epochs=epochs, lr=lr, batch_size=batch_size, temperature=temperature, hard_label_weight=alpha)
        accepted = True
    except UserError as error:
        accepted = False
        assert "\n" not in str(error) and str(error).startswith("--")
    assert accepted == valid


@FAST
@given(spec=st.text(alphabet="0123456789,- x", max_size=8), total=st.integers(1, 12))
def test_student_layer_spec_is_parsed_or_rejected_with_one_line(spec, total):
    try:
        layers = parse_layers(spec, total)
    except UserError as error:
        assert "--student-layers" in str(error) and "\n" not in str(error)
        return
    assert layers == sorted(set(layers)) and all(0 <= i < total for i in layers) and layers
