"""What a classifier's graph takes, for the export stage that serves text and images alike.

The export stage (edgekd/exporting/stage.py) needs five things from a task's inputs: the
graph's input names and axes, a sample to trace, random batches for the parity check,
batches of real rows (validation and calibration) with their labels, and the shapes
torch.export may vary. `TokenInputs` makes them from a tokenizer (batch x sequence ids and
masks), `PixelInputs` from an image processor (batch x channels x height x width pixels);
everything else about an export (int8 search, checks, manifest) is the same code for both.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

BATCH_SIZE = 32
PARITY_SHAPES = ((1, 7), (3, 16), (4, 33), (2, 64))  # (batch, sequence) of the random parity batches


def trace_sample(tokenizer, input_names: list[str]) -> tuple[torch.Tensor, ...]:
    """Two rows of different lengths, padded: the trace sees batch > 1 and a real mask."""
    sample = tokenizer(["an example sentence to trace the graph", "a shorter one"],
                       padding=True, return_tensors="pt")
    return tuple(sample[name] for name in input_names)


@dataclass
class TokenInputs:
    """A text classifier's inputs: token ids, attention mask (and token types), padded per batch."""

    tokenizer: object
    names: list[str]
    max_length: int = 128
    kind = "tokens"

    def axes(self) -> list[str]:
        return ["batch", "sequence"]

    def trace_sample(self) -> tuple[torch.Tensor, ...]:
        return trace_sample(self.tokenizer, self.names)

    def dynamic_dims(self, *, max_batch: int, max_sequence: int) -> dict[int, object]:
        return {0: torch.export.Dim("batch", min=1, max=max_batch),
                1: torch.export.Dim("sequence", min=2, max=max_sequence)}

    def random_feeds(self, *, seed: int = 0, shapes=PARITY_SHAPES) -> list[dict[str, np.ndarray]]:
        from edgekd.exporting.parity import random_batches

        return random_batches(self.tokenizer, self.names, seed=seed, shapes=shapes)

    def random_calibration(self, batches: int, batch_size: int) -> list[dict[str, np.ndarray]]:
        return self.random_feeds(seed=1, shapes=[(batch_size, 64)] * batches)

    def feeds(self, dataset, *, batch_size: int = BATCH_SIZE) -> list[dict[str, np.ndarray]]:
        from edgekd.data import batches, encode

        encoded = encode(dataset, self.tokenizer, max_length=self.max_length)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return [{name: batch[name].numpy() for name in self.names}
                for batch in batches(encoded, batch_size=batch_size, pad_token_id=pad)]


@dataclass
class PixelInputs:
    """An image classifier's input: `pixel_values` (batch, channels, height, width), as its image processor makes them."""

    processor: object
    channels: int
    height: int
    width: int
    names = ["pixel_values"]
    kind = "pixels"

    @classmethod
    def of(cls, model: torch.nn.Module, processor) -> PixelInputs:
        from edgekd.pixels import input_size, num_channels

        height, width = input_size(processor, model)
        return cls(processor=processor, channels=num_channels(model), height=height, width=width)

    def axes(self) -> list[str]:
        return ["batch", "channels", "height", "width"]

    def _random(self, generator: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
        # normalised pixels are roughly standard normal
        values = generator.standard_normal((batch, self.channels, self.height, self.width)).astype(np.float32)
        return {"pixel_values": values}

    def trace_sample(self) -> tuple[torch.Tensor, ...]:
        return (torch.from_numpy(self._random(np.random.default_rng(0), 2)["pixel_values"]),)

    def dynamic_dims(self, *, max_batch: int, max_sequence: int) -> dict[int, object]:
        return {0: torch.export.Dim("batch", min=1, max=max_batch)}

    def random_feeds(self, *, seed: int = 0, shapes=PARITY_SHAPES) -> list[dict[str, np.ndarray]]:
        generator = np.random.default_rng(seed)
        return [self._random(generator, batch) for batch, _ in shapes]

    def random_calibration(self, batches: int, batch_size: int) -> list[dict[str, np.ndarray]]:
        return self.random_feeds(seed=1, shapes=[(batch_size, 0)] * batches)

    def feeds(self, dataset, *, batch_size: int = BATCH_SIZE) -> list[dict[str, np.ndarray]]:
        from edgekd.pixels import batch_pixels

        return [{"pixel_values": batch_pixels(dataset, list(range(start, min(start + batch_size, len(dataset)))),
                                              [self.processor], channels=[self.channels])[0].numpy()}
                for start in range(0, len(dataset), batch_size)]


def sample_rows(dataset, count: int, *, seed: int = 0):
    """`count` rows of `dataset` chosen at random (all when it has fewer), in their order."""
    indices = sorted(random.Random(seed).sample(range(len(dataset)), min(count, len(dataset))))
    return dataset.subset(indices), len(indices)
