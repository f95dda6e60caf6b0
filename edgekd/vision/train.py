"""Image-classifier distillation: the stage that prepares the teacher, hands the task's
pieces to the one training loop (edgekd/training/loop.py) and saves the student.

The loss is that of text classifiers (edgekd/training/losses.py): hard-label cross-entropy
plus temperature-softened KL to the teacher's logits, plus, by their weights, feature-map
MSE between mapped blocks (a learned 1x1 convolution takes the student's channels to the
teacher's, and the student's map is resized to the teacher's grid, so any two families
compare) and attention KL between transformer pairs with the same token count.

"Consistent teaching": with augmentation on (random-resized crop, flip, mixup) the
teacher and the student see the same augmented view of each picture, each through its
own image processor, so the teacher runs inside the loop. With augmentation off and
logit KD alone, the teacher's logits over the training images are computed once and
stored in the teacher cache (verified before it is read), as for text.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.config import ImageDistillConfig
from edgekd.training.cache import default_cache_root, open_shards
from edgekd.training.distributed import Ranks
from edgekd.training.losses import attention_kl, hard_ce, hidden_mse, kd_kl
from edgekd.training.loop import Trainee, check_first_batch
from edgekd.training.objective import default_layer_map, parse_layer_map
from edgekd.training.train import DistillResult, result_of, train_classifier
from edgekd.errors import UserError
from edgekd.metrics import quality
from edgekd.pixels import Augment, batch_pixels, num_channels
from edgekd.vision.data import ImageDataset
from edgekd.vision.models import feature_maps, is_transformer

EVAL_BATCH = 64


def augment_of(config: ImageDistillConfig) -> Augment:
    """The augmentation of consistent teaching that the config asks for."""
    return Augment(crop_scale=config.crop_scale, flip=config.flip, mixup=config.mixup)


class ProjectedImageStudent(nn.Module):
    """What learns: the student and the 1x1 convolutions taking its feature maps to the teacher's channels."""

    def __init__(self, student: nn.Module, projections: list[nn.Module]) -> None:
        super().__init__()
        self.student = student
        self.projections = nn.ModuleList(projections)

    def forward(self, pixel_values: torch.Tensor, *, features: bool, attentions: bool) -> dict:
        if not features and not attentions:
            return {"logits": self.student(pixel_values=pixel_values).logits}
        return feature_maps(self.student, pixel_values, attentions=attentions)


@dataclass(frozen=True)
class Plan:
    """Which student feature map learns from which teacher map, and which outputs each loss reads."""

    pairs: list[tuple[int, int]]
    features: bool
    attentions: bool
    online: bool  # the teacher runs inside the loop (augmentation or intermediate losses)


def plan(config: ImageDistillConfig, *, teacher: nn.Module | None, student: nn.Module,
         probe: torch.Tensor, teacher_probe: torch.Tensor | None) -> tuple[Plan, list[nn.Module]]:
    features, attentions = config.hidden_mse_weight > 0, config.attention_weight > 0
    if teacher is None:
        if features or attentions:
            raise UserError("feature and attention losses need a teacher; set their weights to 0")
        return Plan([], False, False, False), []
    if attentions and not (is_transformer(teacher) and is_transformer(student)):
        raise UserError("--attention-weight needs a transformer teacher and student (ViT, DeiT, ...); "
                        f"{type(teacher).__name__} -> {type(student).__name__} learns from logits and "
                        "--hidden-mse-weight feature maps")
    pairs, projections = [], []
    if attentions:
        from edgekd.models import use_eager_attention

        use_eager_attention(teacher)
        use_eager_attention(student)
    if features or attentions:
        with torch.no_grad():
            ours = feature_maps(student.eval(), probe, attentions=attentions)
            theirs = feature_maps(teacher.eval(), teacher_probe, attentions=attentions)
        source = getattr(student.config, "edgekd_source_layers", None)
        if config.layer_map:
            pairs = parse_layer_map(config.layer_map, student_layers=len(ours["maps"]),
                                    teacher_layers=len(theirs["maps"]))
        else:
            pairs = default_layer_map(student_layers=len(ours["maps"]), teacher_layers=len(theirs["maps"]),
                                      source_layers=source)
        if attentions:
            for s, t in pairs:
                if ours["attentions"][s].shape[-1] != theirs["attentions"][t].shape[-1]:
                    raise UserError(f"--attention-weight: student block {s} attends over "
                                    f"{ours['attentions'][s].shape[-1]} tokens, teacher block {t} over "
                                    f"{theirs['attentions'][t].shape[-1]}; give both the same image and "
                                    "patch size, or set --attention-weight 0")
        if features:
            projections = [nn.Conv2d(ours["maps"][s].shape[1], theirs["maps"][t].shape[1], kernel_size=1)
                           for s, t in pairs]
    online = augment_of(config).active or features or attentions or not config.teacher_cache
    return Plan(pairs, features, attentions, online), projections


def distill_images(*, teacher: nn.Module | None, teacher_processor, student: nn.Module, processor,
                   train: ImageDataset, validation: ImageDataset | None, config: ImageDistillConfig, out: Path,
                   overwrite: bool = False, show_progress: bool = True, resume: bool = False,
                   cache_dir: Path | None = None, log=print) -> DistillResult:
    """Train `student` to imitate `teacher` on `train` and save it (with its image processor) to `out`.
    With `teacher=None` it learns from the labels alone (the cross-entropy baseline, and how
    the demo trains its teacher)."""
    if len(train) == 0:
        raise UserError("the training data has no images; give at least one")
    if teacher is None and not any(label is not None for label in train.labels):
        raise UserError("the training images have no labels and there is no teacher to learn from")
    started = time.perf_counter()
    cache_root = Path(cache_dir) if cache_dir else default_cache_root()
    channels = [num_channels(student)] + ([num_channels(teacher)] if teacher is not None else [])
    processors = [processor] + ([teacher_processor] if teacher is not None else [])
    found: dict = {}

    def prepare(*, device: torch.device, ranks: Ranks, show_progress: bool) -> Trainee:
        probes = batch_pixels(train, [0, min(1, len(train) - 1)], processors, channels=channels)
        check_first_batch({"teacher": teacher, "student": student},  # each on its own pixels; a classifier has logits
                          lambda role, model, device: model(
                              pixel_values=probes[1 if role == "teacher" else 0].to(device)).logits)
        chosen, projections = plan(config, teacher=teacher, student=student, probe=probes[0],
                                   teacher_probe=probes[1] if teacher is not None else None)
        found["plan"] = chosen
        module = ProjectedImageStudent(student, projections)
        cached = None
        if teacher is not None and not chosen.online:
            cached = torch.from_numpy(_cached_logits(teacher, teacher_processor, train, root=cache_root,
                                                     device=device, ranks=ranks, show_progress=show_progress))
        if teacher is not None:
            teacher.to(device).eval()
        if validation is not None and len(validation) and "validation_labels" not in found:
            found["validation_labels"] = np.array([-1 if l is None else l for l in validation.labels])
            found["teacher_validation"] = (None if teacher is None else
                                           logits_of(teacher, teacher_processor, validation, device=device))
        log(describe_teaching(config, chosen, teacher=teacher))

        def collate(indices: list[int]) -> dict:
            rng = random.Random(hash((config.seed, *indices)))  # the same view on resume
            views = batch_pixels(train, indices, processors if chosen.online else processors[:1],
                                 channels=channels, augment=augment_of(config), rng=rng)
            labels = torch.tensor([-100 if train.labels[i] is None else train.labels[i] for i in indices])
            batch = {"index": torch.tensor(indices), "pixel_values": views[0], "labels": labels}
            if chosen.online:
                batch["teacher_pixel_values"] = views[1]
            if config.mixup > 0 and len(indices) > 1:
                weight = float(np.random.default_rng(rng.getrandbits(32)).beta(config.mixup, config.mixup))
                order = list(range(len(indices)))
                rng.shuffle(order)
                # per row, so that the loop's micro-batches and ranks can take any rows
                batch["mixed_labels"] = labels[order]
                batch["mix_weight"] = torch.full((len(indices),), weight)
                for name in ("pixel_values", "teacher_pixel_values"):
                    if name in batch:
                        batch[name] = weight * batch[name] + (1 - weight) * batch[name][order]
            return batch

        def loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
            return step_loss(model, batch, teacher=teacher if chosen.online else None, cached=cached,
                             plan=chosen, config=config)

        def evaluate() -> dict:
            logits = logits_of(student, processor, validation, device=device)
            return quality(logits, found["validation_labels"], teacher_logits=found["teacher_validation"])

        return Trainee(task="image-classification", module=module, student=student, examples=len(train),
                       collate=collate, units=lambda batch: len(batch["index"]), loss=loss,
                       evaluate=evaluate if validation is not None and len(validation) else None)

    def save(folder: Path, seconds: float) -> None:
        student.save_pretrained(folder, safe_serialization=True)
        processor.save_pretrained(folder)
        record = {"teacher_cache": not found["plan"].online and teacher is not None,
                  "augmentation": augment_of(config).describe(), "feature_pairs": found["plan"].pairs,
                  "seconds": seconds}
        (folder / "distillation.json").write_text(json.dumps(record, indent=2))

    trained = train_classifier(task="image-classification", teacher=teacher, config=config, out=out,
                               examples=len(train), prepare=prepare, save=save, overwrite=overwrite, resume=resume,
                               show_progress=show_progress)
    teacher_quality = {}
    if found.get("teacher_validation") is not None:
        teacher_quality = quality(found["teacher_validation"], found["validation_labels"], teacher_logits=None)
    return result_of(trained, started=started, validation=trained.progress.best_metrics,
                     teacher_validation=teacher_quality)


def describe_teaching(config: ImageDistillConfig, chosen: Plan, *, teacher) -> str:
    """One line saying how the teacher teaches in this run."""
    if teacher is None:
        return "training on the labels alone (no teacher)"
    augment = augment_of(config)
    views = ", ".join(name for name, on in (("random-resized crop", augment.crop_scale > 0),
                                            ("flip", augment.flip), ("mixup", augment.mixup > 0)) if on)
    if not chosen.online:
        return "teacher: logits cached once (no augmentation: every epoch sees the same pictures)"
    why = f"the same augmented view ({views}) for teacher and student" if views else "feature/attention losses"
    return f"teacher: runs every step ({why}); its outputs are not cached"


def step_loss(model: nn.Module, batch: dict, *, teacher: nn.Module | None, cached: torch.Tensor | None,
              plan: Plan, config: ImageDistillConfig) -> torch.Tensor:
    """alpha * CE + (1 - alpha) * KD + feature MSE + attention KL (each by its weight); with
    mixup, CE is the mixed pair's CE, as the pictures are mixed."""
    outputs = model(batch["pixel_values"], features=plan.features, attentions=plan.attentions)
    logits = outputs["logits"]
    labels = batch["labels"]
    if "mixed_labels" in batch:
        weight = float(batch["mix_weight"][0])
        cross_entropy = weight * hard_ce(logits, labels) + (1 - weight) * hard_ce(logits, batch["mixed_labels"])
    else:
        cross_entropy = hard_ce(logits, labels)
    if teacher is None and cached is None:
        return cross_entropy, {}
    theirs = None
    if cached is not None:
        teacher_logits = cached[batch["index"].cpu()].to(logits.device)
    else:
        with torch.no_grad():
            theirs = feature_maps(teacher, batch["teacher_pixel_values"], attentions=plan.attentions) \
                if plan.features or plan.attentions else {"logits": teacher(pixel_values=batch["teacher_pixel_values"]).logits}
        teacher_logits = theirs["logits"]
    soft = kd_kl(logits, teacher_logits, temperature=config.temperature)
    alpha = config.hard_label_weight
    total = soft if not (labels != -100).any() else alpha * cross_entropy + (1 - alpha) * soft
    parts = {}
    if plan.features:
        inner = model.module if hasattr(model, "module") else model
        feature = sum(feature_mse(inner.projections[k](outputs["maps"][s]), theirs["maps"][t])
                      for k, (s, t) in enumerate(plan.pairs)) / len(plan.pairs)
        total = total + config.hidden_mse_weight * feature
        parts["feature_mse"] = float(feature.detach())
    if plan.attentions:
        attention = sum(attention_kl(outputs["attentions"][s], theirs["attentions"][t],
                                     torch.ones(logits.shape[0], outputs["attentions"][s].shape[-1],
                                                device=logits.device))
                        for s, t in plan.pairs) / len(plan.pairs)
        total = total + config.attention_weight * attention
        parts["attention_kl"] = float(attention.detach())
    return total, parts


def feature_mse(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """MSE per channel and position between a projected student map and the teacher's,
    the student's resized to the teacher's grid, relative to the teacher map's mean square
    (so a loss of 1 means "no better than zeros" whatever the teacher's scale)."""
    if student_map.shape[-2:] != teacher_map.shape[-2:]:
        student_map = F.interpolate(student_map, size=teacher_map.shape[-2:], mode="bilinear", align_corners=False)
    tokens = lambda m: m.flatten(2).transpose(1, 2)  # noqa: E731 - (batch, positions, channels)
    mask = torch.ones(student_map.shape[0], student_map.shape[-2] * student_map.shape[-1], device=student_map.device)
    scale = teacher_map.float().pow(2).mean().clamp(min=1e-6)
    return hidden_mse(tokens(student_map), tokens(teacher_map), mask) / scale


@torch.no_grad()
def logits_of(model: nn.Module, processor, dataset: ImageDataset, *, device: torch.device | str = "cpu",
              batch_size: int = EVAL_BATCH) -> np.ndarray:
    """The model's logits over every picture of `dataset` (no augmentation)."""
    model.eval()
    device = torch.device(device)
    parameters = next(model.parameters())
    moved = parameters.device != device
    if moved:
        model.to(device)
    rows = []
    channels = num_channels(model)
    for start in range(0, len(dataset), batch_size):
        indices = list(range(start, min(start + batch_size, len(dataset))))
        (pixels,) = batch_pixels(dataset, indices, [processor], channels=[channels])
        rows.append(model(pixel_values=pixels.to(device)).logits.float().cpu().numpy())
    if moved:
        model.to(parameters.device)
    return np.concatenate(rows) if rows else np.zeros((0, model.config.num_labels), dtype=np.float32)


def dataset_digest(dataset: ImageDataset) -> str:
    """What the pictures are: a path's name, size and modification time; bytes' and arrays' own bytes."""
    digest = hashlib.sha256()
    for image in dataset.images:
        if isinstance(image, Path):
            stat = image.stat()
            digest.update(f"{image.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        elif isinstance(image, np.ndarray):
            digest.update(str(image.shape).encode())
            digest.update(np.ascontiguousarray(image).tobytes())
        else:
            digest.update(image)
    return digest.hexdigest()


def _cached_logits(teacher: nn.Module, processor, dataset: ImageDataset, *, root: Path, device: torch.device,
                   ranks: Ranks, show_progress: bool) -> np.ndarray:
    """The teacher's logits over `dataset` (float32), from the shared teacher cache under
    `<root>/image-logits/` (teacher weights, pictures and image processor in the key), built
    first where they are missing, each rank its share of the shards."""
    channels = num_channels(teacher)

    @torch.no_grad()
    def compute(rows: list[int]):
        teacher.to(device).eval()
        for start in range(0, len(rows), EVAL_BATCH):
            (pixels,) = batch_pixels(dataset, rows[start:start + EVAL_BATCH], [processor], channels=[channels])
            logits = teacher(pixel_values=pixels.to(device)).logits.float().cpu().numpy()
            yield [{"logits": row[None]} for row in logits]

    shards = open_shards(teacher, root=root / "image-logits", order=np.arange(len(dataset)), compute=compute,
                         contents={"images": dataset_digest(dataset), "processor": processor.to_dict()},
                         meta={"dtype": "float32"}, ranks=ranks, lazy=False, shard_rows=None,
                         what="teacher cache", unwritable="pass --cache-dir or --no-teacher-cache",
                         description="teacher logits (train)", show_progress=show_progress)
    return np.concatenate(shards.rows("logits", range(len(dataset))))
