"""The accuracy budget at export: exact tail probabilities and the noise-aware verdict."""

import math

import numpy as np
import pytest

from edgekd.exporting.validation import ValidationSet, binomial_tail, measure
from edgekd.targets import Budgets


@pytest.mark.parametrize("successes, trials, probability, expected", [
    (0, 10, 0.3, 1.0),
    (2, 2, 0.5, 0.25),
    (5, 5, 0.5, 1 / 32),
    (3, 4, 0.5, 5 / 16),
    (2, 150, 0.01, 1 - 0.99 ** 150 - 150 * 0.01 * 0.99 ** 149),
    (1, 1000, 1e-3, 1 - 0.999 ** 1000),
])
def test_binomial_tail_golden_values(successes, trials, probability, expected):
    assert binomial_tail(successes, trials, probability) == pytest.approx(expected, rel=1e-9)


def test_binomial_tail_is_a_probability_and_falls_along_the_tail():
    tails = [binomial_tail(k, 1000, 0.01) for k in (5, 10, 20, 40, 900)]
    assert all(0.0 <= value <= 1.0 and math.isfinite(value) for value in tails)
    assert tails == sorted(tails, reverse=True) and tails[-1] < 1e-300


def _validation(rows: int, *, labelled: bool) -> ValidationSet:
    """fp32 logits that predict the label of every row (class 0 or 1)."""
    labels = np.arange(rows) % 2
    reference = np.eye(2, dtype=np.float32)[labels] * 3.0
    return ValidationSet(source="test rows", feeds_list=[], labels=labels if labelled else -np.ones(rows, int),
                         reference_logits=reference)


def _flip(validation: ValidationSet, count: int) -> np.ndarray:
    logits = validation.reference_logits.copy()
    logits[:count] = logits[:count, ::-1]
    return logits


def test_two_flipped_rows_of_150_are_within_noise():
    validation = _validation(150, labelled=True)
    accuracy = measure(_flip(validation, 2), validation, budgets=Budgets(max_accuracy_drop=1.0))
    assert accuracy.drop == pytest.approx(200 / 150)
    assert accuracy.p_value == pytest.approx(0.25)  # McNemar: 2 worse, 0 better
    assert accuracy.over_budget and accuracy.passed and accuracy.within_noise
    assert "within noise" in accuracy.describe()


def test_many_flipped_rows_fail_the_budget():
    validation = _validation(150, labelled=True)
    accuracy = measure(_flip(validation, 6), validation, budgets=Budgets(max_accuracy_drop=1.0))
    assert accuracy.p_value == pytest.approx(1 / 64)
    assert not accuracy.passed and "significant" in accuracy.describe()


def test_significance_one_makes_every_excess_count():
    validation = _validation(150, labelled=True)
    accuracy = measure(_flip(validation, 2), validation,
                       budgets=Budgets(max_accuracy_drop=1.0, drop_significance=1.0))
    assert not accuracy.passed


def test_rows_gained_back_weaken_the_evidence():
    """McNemar counts both directions: 6 worse and 3 better is a drop of 2 rows, p ~ 0.25."""
    validation = _validation(300, labelled=True)
    logits = _flip(validation, 6)
    wrong_before = np.arange(6, 9)
    validation.reference_logits[wrong_before] = validation.reference_logits[wrong_before, ::-1]
    accuracy = measure(logits, validation, budgets=Budgets(max_accuracy_drop=0.5))
    assert accuracy.drop == pytest.approx(100 * 3 / 300)
    assert accuracy.p_value == pytest.approx(binomial_tail(6, 9, 0.5))
    assert accuracy.passed


def test_without_labels_changed_predictions_are_tested_against_the_budget():
    validation = _validation(1000, labelled=False)
    few = measure(_flip(validation, 12), validation, budgets=Budgets(max_accuracy_drop=1.0))
    many = measure(_flip(validation, 30), validation, budgets=Budgets(max_accuracy_drop=1.0))
    assert few.drop == pytest.approx(1.2) and few.passed  # 12 of 1000 at a 1% rate: chance
    assert many.drop == pytest.approx(3.0) and not many.passed
