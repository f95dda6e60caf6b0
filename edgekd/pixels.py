"""Pixels: the input adapter of image classifiers, shared by every stage. Each model's own
image processor makes its pixels (input size, mean, std travel with the weights), from the same
pictures, in the same augmented view for teacher and student while training."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class Augment:
    """Consistent teaching: one augmented view of each picture, seen by teacher and student."""

    crop_scale: float = 0.0  # random-resized crop keeping at least this share of the area (0: off)
    flip: bool = False  # horizontal flip with probability 1/2
    mixup: float = 0.0  # Beta(a, a) mixing of pairs in a batch (0: off)

    @property
    def active(self) -> bool:
        return self.crop_scale > 0 or self.flip or self.mixup > 0

    def describe(self) -> dict:
        return {"crop_scale": self.crop_scale, "flip": self.flip, "mixup": self.mixup}


def augmented(picture, augment: Augment, rng: random.Random):
    """The picture cropped (a random area and aspect, resized back) and flipped as `augment` says."""
    from PIL import Image

    if augment.crop_scale > 0:
        width, height = picture.size
        for _ in range(10):
            area = width * height * rng.uniform(augment.crop_scale, 1.0)
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            w, h = int(round((area * aspect) ** 0.5)), int(round((area / aspect) ** 0.5))
            if 0 < w <= width and 0 < h <= height:
                left, top = rng.randint(0, width - w), rng.randint(0, height - h)
                picture = picture.resize((width, height), Image.BILINEAR, box=(left, top, left + w, top + h))
                break
    if augment.flip and rng.random() < 0.5:
        picture = picture.transpose(Image.FLIP_LEFT_RIGHT)
    return picture


def in_mode(picture, channels: int):
    """Grey for one-channel models, RGB for three (transparency dropped)."""
    mode = "L" if channels == 1 else "RGB"
    return picture if picture.mode == mode else picture.convert(mode)


def pixels(processor, pictures: list, *, channels: int) -> torch.Tensor:
    """(batch, channels, height, width) float pixels, made by the model's own image processor."""
    values = processor(images=[in_mode(p, channels) for p in pictures], return_tensors="pt")["pixel_values"]
    return values.float()


def num_channels(model_or_config) -> int:
    config = getattr(model_or_config, "config", model_or_config)
    return int(getattr(config, "num_channels", 3))


def batch_pixels(dataset, indices: Sequence[int], processors: list, *, channels: list[int],
                 augment: Augment | None = None, rng: random.Random | None = None) -> list[torch.Tensor]:
    """Pixels of the same pictures (the same augmented view) for each processor."""
    pictures = [dataset.picture(i) for i in indices]
    if augment is not None and (augment.crop_scale > 0 or augment.flip):
        pictures = [augmented(p, augment, rng) for p in pictures]
    return [pixels(processor, pictures, channels=c) for processor, c in zip(processors, channels)]


def probe_batches(dataset, processor, *, channels: int, count: int = 64,
                  batch_size: int = 16) -> list[dict[str, torch.Tensor]]:
    """Pixels of the first `count` pictures in batches: what a sliced student's widths are ranked on."""
    indices = list(range(min(count, len(dataset))))
    return [{"pixel_values": batch_pixels(dataset, indices[start:start + batch_size], [processor],
                                          channels=[channels])[0]}
            for start in range(0, len(indices), batch_size)]


def input_size(processor, model) -> tuple[int, int]:
    """(height, width) of the pixels the processor makes for `model`."""
    from PIL import Image

    probe = Image.new("L" if num_channels(model) == 1 else "RGB", (97, 61))
    shape = pixels(processor, [probe], channels=num_channels(model)).shape
    return int(shape[-2]), int(shape[-1])
