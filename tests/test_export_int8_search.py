"""Accuracy-aware int8 on a model built to have one badly quantising layer.

The model: a tiny BERT trained for a few steps on the keyword task (so predictions
carry signal), then the pooler's weight matrix gets one entry 1000x larger than the
rest, on an output the classifier ignores. In fp32 nothing changes; in per-tensor int8
that entry sets the scale, every other pooler weight rounds to zero and the predictions
collapse. The search must find that node and keep it (and only it) in float.
"""

import json

import pytest
import torch

from conftest import LABELS, make_classifier, make_rows, make_tokenizer
from edgekd.data import TextDataset
from edgekd.errors import GateFailed
from edgekd.exporting.stage import export
from edgekd.models import save_model
from edgekd.targets import load_target

POOLER = "/model/bert/pooler/dense/Gemm"


def _trained_classifier():
    torch.manual_seed(0)
    model, tokenizer = make_classifier("bert", layers=2), make_tokenizer()
    rows = make_rows(96, seed=4)
    encoded = tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
    labels = torch.tensor([LABELS.index(r["label"]) for r in rows])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(25):
        loss = torch.nn.functional.cross_entropy(model(**encoded).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def outlier_student(tmp_path_factory):
    model, tokenizer = _trained_classifier()
    with torch.no_grad():
        weight = model.bert.pooler.dense.weight  # (out, in)
        weight[0, :] = 0
        weight[0, 0] = 1000 * weight.abs().max()
        model.classifier.weight[:, 0] = 0  # the outlier's output feeds nothing: fp32 unchanged
    folder = tmp_path_factory.mktemp("outlier-student")
    save_model(model, tokenizer, folder)
    rows = make_rows(60, seed=5)
    validation = TextDataset(texts=[r["text"] for r in rows],
                             labels=[LABELS.index(r["label"]) for r in rows], label_names=LABELS)
    return folder, validation


def _target(tmp_path, **overrides):
    lines = ["base: onnx-int8", "quantization:"]
    lines += [f"  {key}: {value}" for key, value in overrides.items()]
    path = tmp_path / "int8.yaml"
    path.write_text("\n".join(lines) + "\n")
    return load_target(str(path))


def test_search_keeps_the_bad_layer_in_float_and_meets_the_budget(outlier_student, tmp_path):
    folder, validation = outlier_student
    (artifact,) = export(folder, targets=[load_target("onnx-int8")], out=tmp_path,
                         validation=validation)
    assert artifact.nodes_kept_float == (POOLER,)
    assert artifact.accuracy.drop <= 1.0
    manifest = json.loads((artifact.folder / "edgekd.json").read_text())
    assert manifest["nodes_kept_float"] == [POOLER]
    assert manifest["sensitivity"][0]["node"] == POOLER
    # the damage it found: far over the budget before, and the most sensitive node by far
    assert manifest["accuracy_before_search"]["drop"] > 10
    scores = [entry["mean_logit_error"] for entry in manifest["sensitivity"]]
    assert scores[0] > 10 * scores[1]


def test_without_the_search_the_bad_layer_breaks_the_budget(outlier_student, tmp_path):
    folder, validation = outlier_student
    with pytest.raises(GateFailed, match=r"loses [0-9.]+ points of accuracy.*budget of 1"):
        export(folder, targets=[_target(tmp_path, accuracy_aware="false")], out=tmp_path / "out",
               validation=validation)
    assert not (tmp_path / "out" / "int8").exists()


def test_when_keeping_nodes_float_cannot_help_export_fails_with_the_numbers(outlier_student, tmp_path):
    folder, validation = outlier_student
    target = _target(tmp_path, max_nodes_kept_float=0)
    with pytest.raises(GateFailed, match=r"int8 loses [0-9.]+ points.*budget 1.*still [0-9.]+ \(p=[0-9.e-]+\) with 0"):
        export(folder, targets=[target], out=tmp_path / "out", validation=validation)
    assert not (tmp_path / "out" / "int8").exists()


def test_nodes_named_in_the_target_stay_float_without_a_search(outlier_student, tmp_path):
    folder, validation = outlier_student
    target = _target(tmp_path, nodes_kept_float=f"['{POOLER}']", accuracy_aware="false")
    (artifact,) = export(folder, targets=[target], out=tmp_path / "out", validation=validation)
    assert artifact.accuracy.passed and artifact.nodes_kept_float == (POOLER,)
