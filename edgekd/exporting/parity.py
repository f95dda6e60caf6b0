"""Check an exported model against the PyTorch model it came from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edgekd.models import model_inputs

# Max abs logit difference allowed against PyTorch fp32, per precision.
LOGIT_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float  # largest |onnx - torch| logit over all checked rows
    agreement: float  # share of rows with the same predicted class
    rows: int  # rows checked
    shapes: list[tuple[int, ...]]  # (batch, sequence) or (batch, channels, height, width) of each checked batch
    tolerance: float | None  # None: only agreement is reported (int8)

    @property
    def passed(self) -> bool:
        return self.tolerance is None or self.max_abs_diff <= self.tolerance


def random_batches(tokenizer, input_names: list[str], *, seed: int = 0,
                   shapes=((1, 7), (3, 16), (4, 33), (2, 64))) -> list[dict[str, np.ndarray]]:
    """Random token batches of several sizes and lengths, rows padded to different lengths, each
    row framed by the tokenizer's own special tokens as real text is ([CLS] ... [SEP], <s> ...
    </s>: an encoder-decoder classifier reads its state at the </s>)."""
    generator = np.random.default_rng(seed)
    special = set(tokenizer.all_special_ids)
    vocabulary = np.array([i for i in range(min(tokenizer.vocab_size, 30000)) if i not in special])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prefix, suffix = _special_frame(tokenizer)
    result = []
    for batch, length in shapes:
        ids = generator.choice(vocabulary, size=(batch, length))
        mask = np.ones((batch, length), dtype=np.int64)
        for row in range(batch):  # every row after the first is padded on the right
            keep = length if row == 0 else int(generator.integers(2, length + 1))
            ids[row, keep:] = pad_id
            mask[row, keep:] = 0
            if len(prefix) + len(suffix) <= keep:
                ids[row, :len(prefix)] = prefix
                ids[row, keep - len(suffix):keep] = suffix
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask,
                 "token_type_ids": np.zeros((batch, length), dtype=np.int64)}
        result.append({name: feeds[name] for name in input_names})
    return result


def _special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after a text's tokens."""
    try:
        framed = list(tokenizer("a")["input_ids"])
        body = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    except Exception:  # noqa: BLE001 - a tokenizer that cannot say: unframed rows
        return [], []
    for start in range(len(framed) - len(body) + 1):
        if body and framed[start:start + len(body)] == body:
            return framed[:start], framed[start + len(body):]
    return [], []


@torch.no_grad()
def check_parity(session, model: torch.nn.Module, feeds_list: list[dict[str, np.ndarray]], *,
                 tolerance: float | None) -> Parity:
    """Compare session outputs with PyTorch logits on every batch in `feeds_list`."""
    model = model.eval().float()
    differences, agreements, shapes = [], [], []
    for feeds in feeds_list:
        reference = model(**model_inputs(model, {k: torch.from_numpy(v) for k, v in feeds.items()})).logits.numpy()
        (exported,) = session.run(["logits"], feeds)
        differences.append(float(np.abs(exported.astype(np.float32) - reference).max()))
        agreements.extend(exported.argmax(-1) == reference.argmax(-1))
        shapes.append(tuple(next(iter(feeds.values())).shape))
    return Parity(max_abs_diff=max(differences), agreement=float(np.mean(agreements)),
                  rows=len(agreements), shapes=shapes, tolerance=tolerance)
