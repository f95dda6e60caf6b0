"""Accuracy of an exported model on validation data, against the fp32 PyTorch student.

With labelled data the accuracy drop is measured in points; with unlabelled data the
share of predictions that changed stands in for it (every changed prediction may be a
lost one). Without data nothing can be said about accuracy: the artifact is checked on
random batches only and the manifest says so.

A drop over the budget counts only when the validation rows show it is real. On 150
rows one changed prediction moves accuracy by 0.67 points, so a quantised model that
flips two rows one way is "over" a 1-point budget by chance alone. Each measurement
carries a one-sided exact p-value: with labels, McNemar's test on the rows the artifact
got wrong that the fp32 student got right against the reverse (is the artifact worse at
all?); without labels, a binomial test of the changed-prediction rate against the
budget. The drop fails the budget when it is over it and p < `significance`
(the target's `budgets.drop_significance`; 1 makes every excess count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from edgekd.data import TextDataset
from edgekd.models import model_inputs
from edgekd.targets import Budgets

BATCH_SIZE = 32


@dataclass(frozen=True)
class ValidationSet:
    """Validation batches with the fp32 student's logits on them, computed once per export."""

    source: str  # where the rows came from: a file name, "demo validation split", ...
    feeds_list: list[dict[str, np.ndarray]]  # token batches, padded per batch
    labels: np.ndarray  # (rows,) class index, -1 where a row has no label
    reference_logits: np.ndarray  # (rows, num_labels) of the fp32 PyTorch student

    @property
    def labelled(self) -> int:
        return int((self.labels >= 0).sum())

    def head(self, count: int) -> ValidationSet:
        """The first `count` batches (all of them when there are fewer)."""
        rows = sum(len(next(iter(feeds.values()))) for feeds in self.feeds_list[:count])
        return ValidationSet(source=self.source, feeds_list=self.feeds_list[:count],
                             labels=self.labels[:rows], reference_logits=self.reference_logits[:rows])


@dataclass(frozen=True)
class Accuracy:
    source: str  # validation data it was measured on
    rows: int  # rows evaluated
    labelled: int  # rows with a label
    reference_accuracy: float | None  # fp32 student, percent (None without labels)
    accuracy: float | None  # this artifact, percent (None without labels)
    agreement: float  # percent of rows predicted as the fp32 student predicts them
    drop: float  # points lost: accuracy drop with labels, else percent of changed predictions
    budget: float  # the target's max_accuracy_drop
    p_value: float = 1.0  # one-sided exact test that the drop is real (see module doc)
    significance: float = 0.05  # an excess over the budget counts when p_value is below this

    @property
    def over_budget(self) -> bool:
        return self.drop > self.budget + 1e-9

    @property
    def passed(self) -> bool:
        return not self.over_budget or self.p_value >= self.significance

    @property
    def within_noise(self) -> bool:
        """Over the budget, but not shown to be real by these validation rows."""
        return self.over_budget and self.passed

    def describe(self) -> str:
        """One line for the export summary and the manifest."""
        if not self.over_budget:
            return f"drop {self.drop:.2f} within budget {self.budget:g}"
        verdict = "within noise" if self.passed else "significant"
        return (f"drop {self.drop:.2f} over budget {self.budget:g} on {self.rows} rows, {verdict} "
                f"(p={self.p_value:.3g}, threshold {self.significance:g})")


def validation_set(dataset: TextDataset, *, model: torch.nn.Module, tokenizer,
                   input_names: list[str], max_length: int, source: str) -> ValidationSet:
    """Tokenise `dataset` and run the fp32 student over it once."""
    from edgekd.exporting.inputs import TokenInputs

    return reference_set(dataset, model=model, inputs=TokenInputs(tokenizer, input_names, max_length), source=source)


def reference_set(dataset, *, model: torch.nn.Module, inputs, source: str) -> ValidationSet:
    """`dataset` (text or images) as the batches `inputs` make (edgekd/exporting/inputs.py), with
    the fp32 student's logits over them, computed once."""
    feeds_list, logits = inputs.feeds(dataset, batch_size=BATCH_SIZE), []
    model = model.eval().float()
    with torch.inference_mode():
        for feeds in feeds_list:
            batch = {name: torch.from_numpy(value) for name, value in feeds.items()}
            logits.append(model(**model_inputs(model, batch)).logits.float().numpy())
    labels = np.array([-1 if label is None else label for label in dataset.labels])
    return ValidationSet(source=source, feeds_list=feeds_list, labels=labels,
                         reference_logits=np.concatenate(logits))


def session_logits(session, feeds_list: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Logits of an onnxruntime-like session (`run(["logits"], feeds)`) over every batch."""
    return np.concatenate([session.run(["logits"], feeds)[0].astype(np.float32)
                           for feeds in feeds_list])


def measure(logits: np.ndarray, validation: ValidationSet, *, budgets: Budgets) -> Accuracy:
    """Accuracy, agreement, drop and its p-value of `logits` (rows, num_labels) on `validation`."""
    predictions = logits.argmax(-1)
    reference = validation.reference_logits.argmax(-1)
    agreement = 100.0 * float((predictions == reference).mean())
    labelled = validation.labels >= 0
    if labelled.any():
        gold = validation.labels[labelled]
        reference_accuracy = 100.0 * float((reference[labelled] == gold).mean())
        accuracy = 100.0 * float((predictions[labelled] == gold).mean())
        drop = reference_accuracy - accuracy
        was_right, is_right = reference[labelled] == gold, predictions[labelled] == gold
        worse, better = int((was_right & ~is_right).sum()), int((~was_right & is_right).sum())
        p_value = binomial_tail(worse, worse + better, 0.5)  # McNemar, exact, one-sided
    else:
        reference_accuracy = accuracy = None
        drop = 100.0 - agreement
        changed = int((predictions != reference).sum())
        p_value = binomial_tail(changed, len(predictions), budgets.max_accuracy_drop / 100.0)
    return Accuracy(source=validation.source, rows=len(predictions), labelled=int(labelled.sum()),
                    reference_accuracy=reference_accuracy, accuracy=accuracy, agreement=agreement,
                    drop=drop, budget=budgets.max_accuracy_drop, p_value=p_value,
                    significance=budgets.drop_significance)


def binomial_tail(successes: int, trials: int, probability: float) -> float:
    """P(X >= successes) for X ~ Binomial(trials, probability), exact (log space)."""
    if successes <= 0:
        return 1.0
    if probability <= 0.0:
        return 0.0
    if probability >= 1.0:
        return 1.0
    log_p, log_q = math.log(probability), math.log1p(-probability)
    terms = [math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
             + k * log_p + (trials - k) * log_q for k in range(successes, trials + 1)]
    peak = max(terms)
    return min(1.0, math.exp(peak) * sum(math.exp(t - peak) for t in terms))


def mean_logit_error(logits: np.ndarray, validation: ValidationSet) -> float:
    """Mean |logit - fp32 logit|: a smooth damage score where accuracy moves in steps."""
    return float(np.abs(logits - validation.reference_logits).mean())
