"""--fine-tune-teacher: a pretrained encoder without a classification head (a sentence-transformers
checkpoint) becomes the teacher, fine-tuned once on the data's labels, cached and reused."""

from __future__ import annotations

import json

import pytest

from conftest import LABELS, make_config, make_rows, make_tokenizer
from edgekd.errors import UserError


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    from transformers import BertModel

    import torch

    folder = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(0)
    config = make_config("bert", layers=2)
    config.architectures = ["BertModel"]  # as a sentence-transformers checkpoint is saved: no head
    BertModel(config).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def test_an_encoder_without_a_head_is_refused_naming_the_option(encoder_dir, tmp_path):
    import edgekd

    with pytest.raises(UserError, match="not a sequence classifier.*--fine-tune-teacher"):
        edgekd.distill(teacher=encoder_dir, data=make_rows(60), out=tmp_path / "s", student_layers="1", quiet=True,
                       log=None, cache_dir=tmp_path / "cache")


def test_the_teacher_is_fine_tuned_once_on_the_datas_labels_then_reused(encoder_dir, tmp_path):
    import edgekd
    from edgekd.models import load_classifier

    rows = make_rows(120)
    options = dict(teacher=encoder_dir, data=rows, student_layers="1", epochs=1, fine_tune_teacher=True,
                   quiet=True, allow_poor_student=True, cache_dir=tmp_path / "cache")
    lines = []
    first = edgekd.distill(out=tmp_path / "first", log=lines.append, **options)
    assert any(line.startswith(f"teacher: fine-tuning {encoder_dir} on 108 rows of 3 labels") for line in lines)
    teachers = list((tmp_path / "cache" / "teachers").iterdir())
    assert len(teachers) == 1 and (teachers[0] / "edgekd-checksums.json").is_file()
    teacher, _ = load_classifier(teachers[0])
    assert teacher.config.id2label == dict(enumerate(sorted(LABELS)))  # the data's labels, sorted
    metrics = [json.loads(line) for line in (teachers[0] / "metrics.jsonl").read_text().splitlines()]
    assert max(record["epoch"] for record in metrics) == 3 and first.path.is_dir()
    # trained: 3 epochs validated on the held-out rows, the encoder's own weights moved
    from safetensors.torch import load_file

    assert [record["epoch"] for record in metrics if "validation" in record] == [1, 2, 3]
    before, after = load_file(encoder_dir / "model.safetensors"), load_file(teachers[0] / "model.safetensors")
    moved = [name for name, tensor in before.items() if not (after[f"bert.{name}"] == tensor).all()]
    assert len(moved) > len(before) // 2
    lines.clear()
    edgekd.distill(out=tmp_path / "second", log=lines.append, **options)
    assert any(line == f"teacher: {encoder_dir} fine-tuned on 108 rows, cached at {teachers[0]}" for line in lines)
    assert list((tmp_path / "cache" / "teachers").iterdir()) == teachers
