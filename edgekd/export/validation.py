"""Accuracy of an exported model on validation data, against the fp32 PyTorch student.

With labelled data the accuracy drop is measured in points; with unlabelled data the
share of predictions that changed stands in for it (every changed prediction may be a
lost one). Without data nothing can be said about accuracy: the artifact is checked on
random batches only and the manifest says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edgekd.data import TextDataset, batches, encode
from edgekd.models import model_inputs

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

    @property
    def passed(self) -> bool:
        return self.drop <= self.budget + 1e-9


def validation_set(dataset: TextDataset, *, model: torch.nn.Module, tokenizer,
                   input_names: list[str], max_length: int, source: str) -> ValidationSet:
    """Tokenise `dataset` and run the fp32 student over it once."""
    encoded = encode(dataset, tokenizer, max_length=max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    feeds_list, logits = [], []
    model = model.eval().float()
    with torch.inference_mode():
        for batch in batches(encoded, batch_size=BATCH_SIZE, pad_token_id=pad):
            feeds_list.append({name: batch[name].numpy() for name in input_names})
            logits.append(model(**model_inputs(model, batch)).logits.float().numpy())
    labels = np.array([-1 if label is None else label for label in dataset.labels])
    return ValidationSet(source=source, feeds_list=feeds_list, labels=labels,
                         reference_logits=np.concatenate(logits))


def session_logits(session, feeds_list: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Logits of an onnxruntime-like session (`run(["logits"], feeds)`) over every batch."""
    return np.concatenate([session.run(["logits"], feeds)[0].astype(np.float32)
                           for feeds in feeds_list])


def measure(logits: np.ndarray, validation: ValidationSet, *, budget: float) -> Accuracy:
    """Accuracy, agreement and drop of `logits` (rows, num_labels) on `validation`."""
    predictions = logits.argmax(-1)
    reference = validation.reference_logits.argmax(-1)
    agreement = 100.0 * float((predictions == reference).mean())
    labelled = validation.labels >= 0
    if labelled.any():
        gold = validation.labels[labelled]
        reference_accuracy = 100.0 * float((reference[labelled] == gold).mean())
        accuracy = 100.0 * float((predictions[labelled] == gold).mean())
        drop = reference_accuracy - accuracy
    else:
        reference_accuracy = accuracy = None
        drop = 100.0 - agreement
    return Accuracy(source=validation.source, rows=len(predictions), labelled=int(labelled.sum()),
                    reference_accuracy=reference_accuracy, accuracy=accuracy, agreement=agreement,
                    drop=drop, budget=budget)


def mean_logit_error(logits: np.ndarray, validation: ValidationSet) -> float:
    """Mean |logit - fp32 logit|: a smooth damage score where accuracy moves in steps."""
    return float(np.abs(logits - validation.reference_logits).mean())
