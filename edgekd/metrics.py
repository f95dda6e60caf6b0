"""Quality metrics as pure functions of predictions, and prediction with PyTorch models: used
by training (validation), export and bench alike, so no stage imports another for them."""

from __future__ import annotations

import math

import numpy as np
import torch

from edgekd.data import Encoded, batches
from edgekd.models import model_inputs


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Share of labelled rows (label >= 0) predicted right."""
    labelled = labels >= 0
    return float((predictions[labelled] == labels[labelled]).mean()) if labelled.any() else float("nan")


def macro_f1(predictions: np.ndarray, labels: np.ndarray, *, num_labels: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    labelled = labels >= 0
    predictions, labels = predictions[labelled], labels[labelled]
    scores = []
    for cls in range(num_labels):
        true_positive = np.sum((predictions == cls) & (labels == cls))
        predicted, actual = np.sum(predictions == cls), np.sum(labels == cls)
        if predicted == 0 and actual == 0:
            continue
        scores.append(2 * true_positive / (predicted + actual))
    return float(np.mean(scores)) if scores else float("nan")


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, *, k: int) -> float:
    """Share of labelled rows whose label is among the k highest logits (ties broken by index)."""
    labelled = labels >= 0
    if not labelled.any():
        return float("nan")
    top = np.argsort(-logits[labelled], axis=-1, kind="stable")[:, :k]
    return float((top == labels[labelled][:, None]).any(axis=-1).mean())


def agreement(predictions: np.ndarray, reference: np.ndarray) -> float:
    """Share of rows where two models predict the same class."""
    return float((predictions == reference).mean())


def mean_kl(logits: np.ndarray, reference_logits: np.ndarray) -> float:
    """Mean KL(reference || model) of the softmax distributions, in nats."""
    log_p = _log_softmax(reference_logits.astype(np.float64))
    log_q = _log_softmax(logits.astype(np.float64))
    per_row = np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)
    return float(np.mean(np.maximum(per_row, 0.0)))  # KL >= 0; rounding can dip below


def paired_interval(first: np.ndarray, second: np.ndarray, *, level: float = 0.95, samples: int = 4000,
                    seed: int = 0) -> list[float]:
    """Bootstrap interval, in points, of accuracy(first) - accuracy(second) on the same rows:
    `first` and `second` are 1 where each model is right on a row and 0 where it is wrong.
    Resampling rows with replacement only redraws how many rows favour each model, so the
    row counts are drawn from their multinomial directly: the same distribution, in memory
    independent of the number of rows."""
    first, second = np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)
    if first.shape != second.shape or first.ndim != 1 or len(first) == 0:
        raise ValueError("paired_interval takes two equally long, non-empty vectors of 0/1 per row")
    difference = first - second  # +1: only the first is right; -1: only the second
    shares = [np.mean(difference == 1), np.mean(difference == 0), np.mean(difference == -1)]
    counts = np.random.default_rng(seed).multinomial(len(first), shares, size=samples)
    means = np.sort(100 * (counts[:, 0] - counts[:, 2]) / len(first))
    tail = (1 - level) / 2
    return [float(means[int(tail * samples)]), float(means[min(samples - 1, int((1 - tail) * samples))])]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@torch.no_grad()
def torch_logits(model: torch.nn.Module, encoded: Encoded, *, pad_token_id: int,
                 batch_size: int = 32, device: str = "cpu", progress=None) -> np.ndarray:
    """Logits of a PyTorch classifier over every row of `encoded`; (rows, num_labels)."""
    model.eval()
    outputs = []
    for batch in batches(encoded, batch_size=batch_size, pad_token_id=pad_token_id):
        inputs = {k: v.to(device) for k, v in model_inputs(model, batch).items()}
        outputs.append(model(**inputs).logits.float().cpu())
        if progress is not None:
            progress(len(batch["index"]))
    return torch.cat(outputs).numpy()


TOP_K = 5


def quality(logits: np.ndarray, labels: np.ndarray, *, teacher_logits: np.ndarray | None) -> dict:
    """Accuracy, macro-F1, top-5 accuracy (with more than 5 classes) and, given the teacher's
    logits, agreement and mean KL to it."""
    predictions = logits.argmax(-1)
    result = {"accuracy": accuracy(predictions, labels),
              "macro_f1": macro_f1(predictions, labels, num_labels=logits.shape[-1])}
    if logits.shape[-1] > TOP_K:  # with TOP_K classes or fewer every label is in the top TOP_K
        result[f"top{TOP_K}_accuracy"] = top_k_accuracy(logits, labels, k=TOP_K)
    if teacher_logits is not None:
        result["agreement"] = agreement(predictions, teacher_logits.argmax(-1))
        result["kl_to_teacher"] = mean_kl(logits, teacher_logits)
    return result


MIN_ROWS_FOR_CHANCE = 30  # fewer labelled validation rows cannot tell a student from a guess


def near_chance(accuracy: float, *, teacher_accuracy: float | None, labels) -> str | None:
    """Why a student's validation accuracy is no better than always predicting the most common
    label while its teacher's is (each beyond two standard errors of that guess), or None.
    Nothing is said with fewer than MIN_ROWS_FOR_CHANCE labelled rows or a teacher at chance too."""
    known = [int(label) for label in labels if label is not None and label >= 0]
    if len(known) < MIN_ROWS_FOR_CHANCE or teacher_accuracy is None or math.isnan(accuracy):
        return None
    guess = max(np.bincount(known)) / len(known)
    margin = 2 * math.sqrt(guess * (1 - guess) / len(known))
    if accuracy <= guess + margin < teacher_accuracy:
        return (f"validation accuracy {accuracy:.1%} is within noise of always predicting the most common "
                f"label ({guess:.1%}, {len(known)} rows) while the teacher reaches {teacher_accuracy:.1%}")
    return None
