"""Accuracy-aware int8 for classifiers: the keep-float search (edgekd/exporting/search.py) with
a classifier's ranking and judge.

- judge: the accuracy drop on validation data is within the budget, or over it by no more
  than chance explains (edgekd/exporting/validation.py);
- rank: each quantised node alone: quantise only that node and measure the mean logit
  error against the fp32 student (a smooth score; accuracy moves in steps).

The search stops at `max_nodes_kept_float`; the caller fails when the budget still misses.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgekd.sessions import onnx_session
from edgekd.exporting.search import keep_float_search
from edgekd.exporting.validation import Accuracy, ValidationSet, mean_logit_error, measure, session_logits
from edgekd.targets import Budgets

# quantize(destination, nodes_kept_float): writes an int8 model keeping those nodes float
Quantizer = Callable[[Path, list[str]], None]
# Scoring a node needs a mean logit error, not an accuracy: two batches (64 rows) rank
# nodes as the full set does and keep the per-node pass short.
SENSITIVITY_BATCHES = 2


@dataclass(frozen=True)
class Int8Search:
    accuracy: Accuracy  # of the model finally written
    first_accuracy: Accuracy  # with every candidate node quantised
    nodes_kept_float: list[str]  # chosen by the search, in the order they were kept
    sensitivity: list[tuple[str, float]] = field(default_factory=list)  # most damaging first


def accuracy_of(path: Path, validation: ValidationSet, *, budgets: Budgets) -> Accuracy:
    logits = session_logits(onnx_session(path), validation.feeds_list)
    return measure(logits, validation, budgets=budgets)


def quantize_within_budget(quantize: Quantizer, destination: Path, *, candidates: list[str],
                           validation: ValidationSet, budgets: Budgets,
                           max_nodes_kept_float: int) -> Int8Search:
    """Write the int8 model to `destination`, keeping nodes float as needed (see module doc)."""
    def judge() -> tuple[bool, Accuracy]:
        accuracy = accuracy_of(destination, validation, budgets=budgets)
        return accuracy.passed, accuracy

    search = keep_float_search(
        rank=lambda: node_sensitivity(quantize, candidates=candidates,
                                      validation=validation.head(SENSITIVITY_BATCHES)),
        build=lambda kept: quantize(destination, kept), judge=judge,
        max_kept=max_nodes_kept_float if candidates else 0)
    return Int8Search(accuracy=search.measurement, first_accuracy=search.first,
                      nodes_kept_float=search.kept, sensitivity=search.ranking)


def node_sensitivity(quantize: Quantizer, *, candidates: list[str],
                     validation: ValidationSet) -> list[tuple[str, float]]:
    """(node, mean logit error with only that node quantised), most damaging first."""
    scores = []
    with tempfile.TemporaryDirectory(prefix="edgekd-sensitivity-") as scratch:
        path = Path(scratch) / "one-node.onnx"
        for node in candidates:
            quantize(path, [other for other in candidates if other != node])
            logits = session_logits(onnx_session(path), validation.feeds_list)
            scores.append((node, mean_logit_error(logits, validation)))
    return sorted(scores, key=lambda item: -item[1])
