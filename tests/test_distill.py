import json

import torch
from transformers import AutoModelForSequenceClassification

from conftest import make_rows
from edgekd.config import DistillConfig
from edgekd.data import Columns, batches, encode, load_file
from edgekd.training.losses import kd_loss
from edgekd.training.train import distill
from edgekd.models import load_classifier, model_inputs, select_layers


def test_one_distillation_step_lowers_the_loss(teacher_dir, train_file):
    teacher, tokenizer = load_classifier(teacher_dir)
    student = select_layers(teacher, [0])
    data = load_file(train_file, columns=Columns(), label2id=teacher.config.label2id)
    batch = next(batches(encode(data, tokenizer, max_length=32), batch_size=32, pad_token_id=0))
    with torch.no_grad():
        teacher_logits = teacher(**model_inputs(teacher, batch)).logits
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05)
    student.eval()  # no dropout: the two losses differ by the step alone, not by their masks
    losses = []
    for _ in range(2):
        logits = student(**model_inputs(student, batch)).logits
        loss = kd_loss(logits, teacher_logits, batch["labels"], temperature=2.0, alpha=0.5)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[1] < losses[0]


def test_distill_writes_a_plain_transformers_folder_and_metrics(teacher_dir, train_file, tmp_path):
    teacher, tokenizer = load_classifier(teacher_dir)
    data = load_file(train_file, columns=Columns(), label2id=teacher.config.label2id)
    config = DistillConfig(epochs=2, batch_size=16, max_length=32, lr=1e-3)
    result = distill(teacher=teacher, student=select_layers(teacher, [0, 3]), tokenizer=tokenizer,
                     train=data, validation=data.subset(range(16)), config=config,
                     out=tmp_path / "student", show_progress=False)
    folder = result.student_dir
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    reloaded = AutoModelForSequenceClassification.from_pretrained(folder)
    assert reloaded.config.num_hidden_layers == 2 and reloaded.config.id2label[2] == "positive"
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "validation" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert {"accuracy", "macro_f1", "agreement", "kl_to_teacher"} <= set(epochs[0]["validation"])
    assert result.best_epoch in (1, 2)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_distillation_learns_the_task(teacher_dir, tmp_path):
    """CE-only training of a tiny model on keyword data climbs well above chance: the loop learns."""
    from conftest import write_jsonl

    teacher, tokenizer = load_classifier(teacher_dir)
    data = load_file(write_jsonl(make_rows(300, seed=5), tmp_path / "d.jsonl"), columns=Columns(),
                     label2id=teacher.config.label2id)
    config = DistillConfig(epochs=4, batch_size=16, max_length=32, lr=3e-3)
    result = distill(teacher=None, student=select_layers(teacher, [0, 1]), tokenizer=tokenizer,
                     train=data.subset(range(240)), validation=data.subset(range(240, 300)),
                     config=config, out=tmp_path / "s", show_progress=False)
    assert result.validation["accuracy"] > 0.55  # chance is 1/3


def test_batches_made_ahead_in_a_thread_train_the_same_student(teacher_dir, train_file, tmp_path, monkeypatch):
    """What a GPU run does (the next batch made while a step runs), forced on the CPU: the same
    batches in the same order, so the same student, bit for bit."""
    import edgekd.training.loop as loop
    from safetensors.torch import load_file as load_weights

    make = loop.Prefetch._make

    def run(out, prefetching: bool):
        monkeypatch.setattr(loop, "_prefetching", lambda device: prefetching)
        made = []
        monkeypatch.setattr(loop.Prefetch, "_make", lambda self, indices: (made.append(indices), make(self, indices))[1])
        teacher, tokenizer = load_classifier(teacher_dir)
        data = load_file(train_file, columns=Columns(), label2id=teacher.config.label2id)
        distill(teacher=teacher, student=select_layers(teacher, [0, 3]), tokenizer=tokenizer, train=data,
                validation=None, config=DistillConfig(epochs=2, batch_size=8, max_length=16, device="cpu",
                                                      checkpoint_every=0),
                out=out, cache_dir=tmp_path / "cache", show_progress=False)
        return load_weights(out / "model.safetensors"), made

    plain, none_made = run(tmp_path / "plain", False)
    ahead, made = run(tmp_path / "ahead", True)
    assert not none_made and len(made) == 16  # 64 rows in batches of 8, two epochs: every batch made once
    assert plain.keys() == ahead.keys() and all(torch.equal(plain[name], ahead[name]) for name in plain)
