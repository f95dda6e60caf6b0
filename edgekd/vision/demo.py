"""The image demo, offline: a ResNet teacher trained once on Fashion-MNIST -> a ResNet student
a quarter of its width and half its depth, distilled -> onnx-fp32 and static int8 -> report.

The teacher is a Hugging Face `ResNetForImageClassification` (four stages of two basic blocks,
64 to 512 channels, 11.2 M parameters) trained from scratch on the training pictures at 56 x 56
pixels, once, then cached and checksummed like the text demo's teacher. The student is that
configuration shrunk by edgekd's own `--student-config depth=1,width=0.5` (one block per stage,
half the channels, random weights) and fed 40 x 40 pixels by its own image processor, so it
does over 10x fewer operations; it learns from the teacher's cached logits and the labels.
The data is Fashion-MNIST (edgekd/vision/fashion_mnist.py): 55,000 training pictures, 5,000
held out for validation and calibration, the 10,000 test pictures for the report.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from edgekd.config import cache_dir
from edgekd.errors import UserError, exclusive
from edgekd.integrity import seal, trusted
from edgekd.progress import console
from edgekd.vision.data import ImageDataset
from edgekd.config import ImageDistillConfig

VALIDATION_ROWS = 5000
TEACHER_SIZE, STUDENT_SIZE = 56, 40  # pixels a side the teacher and the student look at
TEACHER_CONFIG = {"embedding_size": 64, "hidden_sizes": [64, 128, 256, 512], "depths": [2, 2, 2, 2],
                  "layer_type": "basic", "num_channels": 1}
# How the demo teacher is trained; changing any of these (or the config) rebuilds the cached teacher.
TEACHER_RECIPE = ImageDistillConfig(epochs=2, lr=2e-3, batch_size=64, seed=0, hard_label_weight=1.0,
                                    warmup_fraction=0.05, weight_decay=0.05)
STUDENT_CONFIG = "depth=1,width=0.5"
STUDENT_RECIPE = ImageDistillConfig(epochs=4, lr=4e-3, batch_size=64, seed=0, temperature=2.0,
                                    hard_label_weight=0.3, warmup_fraction=0.05, weight_decay=0.05)
TARGETS = ("onnx-fp32", "onnx-int8")


def demo_splits(*, limit: int | None = None, log=console.print) -> dict[str, ImageDataset]:
    """Fashion-MNIST as train / validation / test ImageDatasets (validation: a fixed 5,000 of
    the training pictures); `limit` keeps at most that many pictures per split."""
    from edgekd.vision import fashion_mnist

    images, labels = fashion_mnist.load("train", log=log)
    order = np.random.default_rng(0).permutation(len(images))
    held_out, kept = order[:VALIDATION_ROWS], order[VALIDATION_ROWS:]
    test_images, test_labels = fashion_mnist.load("test", log=log)

    def dataset(pictures, targets, indices, name):
        indices = indices[:limit] if limit is not None else indices
        return ImageDataset(images=[pictures[i] for i in indices], labels=[int(targets[i]) for i in indices],
                            label_names=list(fashion_mnist.LABEL_NAMES), source=f"Fashion-MNIST {name}",
                            names=[f"Fashion-MNIST {name} picture {i}" for i in indices])

    return {"train": dataset(images, labels, kept, "train"),
            "validation": dataset(images, labels, held_out, "train"),
            "test": dataset(test_images, test_labels, np.arange(len(test_images)), "test")}


def image_processor(size: int):
    """Grey pictures resized to size x size, scaled to [0, 1] and normalised around 0.5."""
    from transformers import ViTImageProcessorPil

    return ViTImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5], image_std=[0.5])


def build_teacher(splits: dict[str, ImageDataset], *, cache: Path, recipe: ImageDistillConfig = TEACHER_RECIPE,
                  show_progress: bool = True) -> Path:
    """Train the ResNet teacher on the training split once; later calls return the cached
    folder (once its checksums match)."""
    train = splits["train"]
    key = hashlib.sha256(json.dumps({"recipe": asdict(recipe), "config": TEACHER_CONFIG, "size": TEACHER_SIZE,
                                     "rows": len(train), "labels": train.label_names,
                                     "first": [hashlib.sha256(np.asarray(train.images[i]).tobytes()).hexdigest()
                                               for i in range(min(3, len(train)))]},
                                    sort_keys=True).encode()).hexdigest()[:12]
    folder = cache / "teachers" / f"resnet-fashion-mnist-{key}"
    with exclusive(folder, wait=True, what="image demo teacher cache"):  # a second demo waits, then uses it
        if trusted(folder, what="image demo teacher cache"):
            console.print(f"teacher: cached at {folder}")
            return folder
        _train_teacher(splits, folder=folder, recipe=recipe, show_progress=show_progress)
        seal(folder)  # last: a teacher killed before its checksums are written is trained again
    return folder


def _train_teacher(splits: dict[str, ImageDataset], *, folder: Path, recipe: ImageDistillConfig,
                   show_progress: bool) -> None:
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    from edgekd.vision.train import distill_images

    names = splits["train"].label_names
    console.print(f"teacher: training a ResNet ({sum(TEACHER_CONFIG['depths'])} blocks, "
                  f"{TEACHER_CONFIG['hidden_sizes'][-1]} channels at the widest) on {len(splits['train'])} "
                  f"Fashion-MNIST pictures at {TEACHER_SIZE} px, {recipe.epochs} epochs (once; cached at {folder})")
    torch.manual_seed(recipe.seed)
    model = ResNetForImageClassification(ResNetConfig(**TEACHER_CONFIG, id2label=dict(enumerate(names)),
                                                      label2id={n: i for i, n in enumerate(names)}))
    distill_images(teacher=None, teacher_processor=None, student=model, processor=image_processor(TEACHER_SIZE),
                   train=splits["train"], validation=splits["validation"], config=recipe, out=folder,
                   overwrite=True, show_progress=show_progress, log=console.print)


def student_processor(processor):
    """The teacher's image processor, resized to the student's STUDENT_SIZE."""
    from edgekd.vision.models import resized_processor

    return resized_processor(processor, STUDENT_SIZE, STUDENT_SIZE)


class ImageDemo:
    """Teacher (cached) -> shrunk ResNet student, distilled -> onnx-fp32 + static int8 of the
    student and of the teacher -> report (the driver: edgekd/demo.py)."""

    targets = TARGETS
    export_note = " (int8: static, calibrated on 512 training pictures)"

    def __init__(self, *, cache: Path | None = None, limit: int | None = None, epochs: int | None = None,
                 max_steps: int = 0, repeats: int = 50, show_progress: bool = True):
        if limit is not None and limit < 100:
            raise UserError(f"--limit must be at least 100 pictures, got {limit}")
        self.cache, self.limit, self.repeats, self.show_progress = cache, limit, repeats, show_progress
        self.recipe = replace(STUDENT_RECIPE, epochs=STUDENT_RECIPE.epochs if epochs is None else epochs,
                              max_steps=max_steps)
        self.loaded_teacher = None

    def data(self) -> dict[str, ImageDataset]:
        splits = demo_splits(limit=self.limit)
        console.print(f"data: Fashion-MNIST, {len(splits['train'])} train / {len(splits['validation'])} validation / "
                      f"{len(splits['test'])} test pictures, 10 classes")
        return splits

    def teacher(self, data: dict[str, ImageDataset]) -> Path:
        return build_teacher(data, cache=cache_dir(self.cache), show_progress=self.show_progress)

    def distill(self, teacher: Path, data: dict[str, ImageDataset], out: Path) -> Path:
        from edgekd.vision.models import load_image_classifier, make_image_student
        from edgekd.vision.train import distill_images

        model, processor = self.loaded_teacher = load_image_classifier(teacher, role="teacher")
        student, _ = make_image_student(model, processor, config_spec=STUDENT_CONFIG, seed=STUDENT_RECIPE.seed)
        console.print(f"student: the teacher's configuration shrunk ({STUDENT_CONFIG}, random weights) at "
                      f"{STUDENT_SIZE} px, distilled for {self.recipe.epochs} epoch(s)")
        result = distill_images(teacher=model, teacher_processor=processor, student=student,
                                processor=student_processor(processor), train=data["train"],
                                validation=data["validation"], config=self.recipe, out=out, overwrite=True,
                                show_progress=self.show_progress, cache_dir=cache_dir(self.cache) / "teacher-outputs",
                                log=console.print)
        return result.student_dir

    def export(self, model: Path, data: dict[str, ImageDataset], out: Path) -> list:
        from edgekd.exporting.inputs import sample_rows
        from edgekd.exporting.stage import export
        from edgekd.targets import load_targets_for

        calibration, _ = sample_rows(data["train"], 512, seed=0)
        return export(model, targets=load_targets_for(list(TARGETS), "image-classification"), out=out,
                      overwrite=True, validation=data["validation"], validation_source="Fashion-MNIST validation",
                      calibration=calibration, calibration_source="Fashion-MNIST train", task="image-classification")

    def bench(self, teacher: Path, student: Path, artifacts: list[Path], data: dict[str, ImageDataset]) -> dict:
        from edgekd.benchmarking.classifier import bench

        return bench(teacher=teacher, student=student, artifacts=artifacts, data=data["test"], repeats=self.repeats,
                     show_progress=self.show_progress, teacher_model=self.loaded_teacher, cache_folder=self.cache)

    def record(self, artifacts: list) -> dict:
        return {"teacher_config": TEACHER_CONFIG, "teacher_size": TEACHER_SIZE, "student_config": STUDENT_CONFIG,
                "student_size": STUDENT_SIZE, "student_recipe": asdict(self.recipe)}
