"""Image classification's pipeline: pictures read with the teacher's labels (folders of class
folders, tables of paths or bytes, datasets with an Image feature), the student cut, shrunk or
given (edgekd/vision/models.py), the image stage (edgekd/vision/train.py: the same augmented
view for teacher and student), then the export and bench stages every classifier shares.

Each function takes the options as `edgekd.distill/export/bench` hold them (`options`: every
option by name, defaults filled in; `given`: the names given) and returns their result."""

from __future__ import annotations

from pathlib import Path

from edgekd.tasks import IMAGE_CLASSIFICATION, text_classification
from edgekd.tasks.shared import (Log, check_writable, classifier_student, held_out, judge_student, label2id_of,
                                 saved_label2id, student_lr)
from edgekd.tasks.text_classification import classifier_bench_options, classifier_export

NAME = IMAGE_CLASSIFICATION.name


def _teacher(source, *, trust_remote_code: bool):
    """The teacher and its image processor: a folder or hub id, or a (model, processor) pair already loaded."""
    from edgekd.vision.models import load_image_classifier

    if isinstance(source, tuple):
        return source
    return load_image_classifier(source, role="teacher", trust_remote_code=trust_remote_code)


def distill(options: dict, *, given: set[str], log: Log):
    """An ImageDistillConfig, images read with the teacher's labels, the student made from the
    teacher (or given), the image stage."""
    from edgekd.config import ImageDistillConfig, config_from
    from edgekd.slicing import WIDTH_KEYS
    from edgekd.pixels import num_channels, probe_batches
    from edgekd.vision.models import make_image_student, parse_image_spec, slices_width
    from edgekd.vision.train import distill_images

    config = config_from(ImageDistillConfig, options, given)
    out = Path(options["out"])
    check_writable(out, overwrite=options["overwrite"] or options["resume"])
    teacher_model, processor = _teacher(options["teacher"], trust_remote_code=options["trust_remote_code"])
    spec = options["student_config"]
    sliced = bool(spec) and slices_width(teacher_model, spec)
    if spec:
        config = student_lr(config, random_init=not sliced, given=given, log=log,
                            reshaped=any(key in parse_image_spec(spec) for key in WIDTH_KEYS))
    label2id = label2id_of(teacher_model)
    train = read_images(options["data"], label2id=label2id, options=options, split=options["split"],
                        default_split="train")
    validation, train = held_out(train, options=options, config=config, read=lambda source, split: read_images(
        source, label2id=label2id, options=options, split=split, default_split="validation"))
    student_model, student_processor = make_image_student(
        teacher_model, processor, layers=options["student_layers"], config_spec=spec,
        model=options["student"], seed=config.seed, trust_remote_code=options["trust_remote_code"],
        probe=probe_batches(train, processor, channels=num_channels(teacher_model)) if sliced else None)
    result = distill_images(teacher=teacher_model, teacher_processor=processor, student=student_model,
                            processor=student_processor, train=train, validation=validation, config=config, out=out,
                            overwrite=options["overwrite"], show_progress=not options["quiet"],
                            resume=options["resume"], cache_dir=options["cache_dir"], log=log)
    if result.student_dir is None:
        return None
    student = classifier_student(result, validation, task=NAME, unit="images")
    return judge_student(student, allow_poor_student=options["allow_poor_student"], log=log)


def read_images(source, *, label2id, options: dict, split, default_split: str, label: bool = True):
    """Pictures (edgekd/vision/data.py) with the given label names, or None when no data was given."""
    if source is None:
        return None
    from edgekd.vision.data import load_images

    return load_images(source, label2id=label2id, image_column=options["image_column"],
                       label_column=(options["label_column"] or None) if label else None, split=split,
                       default_split=default_split, show_progress=not options["quiet"])


def export(student: Path, *, targets, out: Path, options: dict, log: Log):
    """The classifiers' export stage over pictures (static int8 calibrated on them)."""
    labels = saved_label2id(student)
    validation = read_images(options["data"], label2id=labels, options=options, split=options["split"],
                             default_split="validation")
    calibration = read_images(options["calibration_data"], label2id=labels, options=options, split=None,
                              default_split="train", label=False)
    return classifier_export(student, targets=targets, out=out, options=options, validation=validation,
                             calibration=calibration, task=NAME)


def bench(options: dict, *, artifacts, gates) -> dict:
    """The classifiers' bench stage over labelled pictures, each model at its own input size."""
    from edgekd.benchmarking.classifier import bench as run_bench

    teacher_model, processor = _teacher(options["teacher"], trust_remote_code=options["trust_remote_code"])
    images = read_images(options["data"], label2id=label2id_of(teacher_model), options=options,
                         split=options["split"], default_split="test")
    return run_bench(teacher=str(options["teacher"]), student=options["student"], artifacts=artifacts, data=images,
                     **classifier_bench_options(options), gates=gates, teacher_model=(teacher_model, processor))


show_export = text_classification.show_export  # the classifiers' table


def demo(options: dict, *, log: Log) -> None:
    """A ResNet on Fashion-MNIST -> a narrower, shallower student at 40 px -> fp32 and static int8 -> report."""
    from edgekd.demo import run
    from edgekd.vision.demo import ImageDemo

    run(ImageDemo(cache=options["cache_dir"], limit=options["limit"], epochs=options["epochs"],
                  max_steps=options["max_steps"] or 0, repeats=options["repeats"], show_progress=not options["quiet"]),
        out=options["out"])
