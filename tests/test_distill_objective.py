"""The objective on real (tiny) models: what each loss reads, layer maps, projections."""

import copy
import math

import pytest
import torch

from conftest import make_classifier, make_rows, make_tokenizer
from edgekd.config import DistillConfig
from edgekd.data import TextDataset, batches, encode
from edgekd.training.objective import (Objective, ProjectedStudent, default_layer_map, forward_outputs,
                                      parse_layer_map)
from edgekd.errors import UserError
from edgekd.models import model_inputs, select_layers, shrunk_student

ALL_LOSSES = dict(hard_label_weight=0.5, hidden_mse_weight=1.0, hidden_cosine_weight=1.0, attention_weight=1.0,
                  minilm_weight=1.0)


def _batch(rows=6, *, pairs=False):
    data = [r["text"] for r in make_rows(rows, seed=3)]
    dataset = TextDataset(texts=data, labels=[0, 1, None, 2, None, 1][:rows], label_names=["a", "b", "c"],
                          text_pairs=list(reversed(data)) if pairs else None)
    return next(batches(encode(dataset, make_tokenizer(), max_length=24), batch_size=rows, pad_token_id=0))


def _outputs(objective, student, teacher, batch):
    with torch.no_grad():
        teacher_outputs = forward_outputs(teacher, batch, objective.needs("teacher"))
    return forward_outputs(student, batch, objective.needs("student")), teacher_outputs


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta", "electra"])
def test_every_loss_is_zero_for_a_student_identical_to_its_teacher(arch):
    teacher = make_classifier(arch, layers=3, hidden=32, heads=4)
    student = copy.deepcopy(teacher)
    objective = Objective(DistillConfig(**ALL_LOSSES), student_config=student.config,
                          teacher_config=teacher.config)
    batch = _batch()
    student_outputs, teacher_outputs = _outputs(objective, student, teacher, batch)
    _, parts = objective(student_outputs, teacher_outputs, torch.full((6,), -100), batch["attention_mask"])
    assert set(parts) == {"kd", "hidden_mse", "hidden_cosine", "attention", "minilm"}
    for name, value in parts.items():
        assert value == pytest.approx(0, abs=1e-5), name


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta", "electra"])
def test_losses_are_finite_and_train_the_projection_when_widths_and_heads_differ(arch):
    teacher = make_classifier(arch, layers=4, hidden=32, heads=4)
    student = shrunk_student(teacher, "hidden=16,layers=2,heads=2,intermediate=32")
    objective = Objective(DistillConfig(**ALL_LOSSES, minilm_relation_heads=2),
                          student_config=student.config, teacher_config=teacher.config)
    assert objective.layer_map == [(0, 1), (1, 3)]  # uniform: the last layer of each half
    trainee = ProjectedStudent(student, objective)
    batch = _batch()
    with torch.no_grad():
        teacher_outputs = forward_outputs(teacher, batch, objective.needs("teacher"))
    loss, parts = trainee(batch, teacher_outputs)
    assert all(math.isfinite(v) and v > 0 for v in parts.values()), parts
    loss.backward()
    assert objective.projections["0"].weight.grad.abs().sum() > 0
    assert student.get_input_embeddings().weight.grad.abs().sum() > 0


def test_outputs_have_the_documented_shapes():
    teacher = make_classifier("bert", layers=4, hidden=32, heads=4)
    objective = Objective(DistillConfig(**ALL_LOSSES), student_config=teacher.config,
                          teacher_config=teacher.config)
    batch = _batch()
    outputs = forward_outputs(teacher, batch, objective.needs("teacher"))
    tokens = batch["input_ids"].shape[1]
    assert outputs["logits"].shape == (6, 3)
    assert outputs["hidden"][3].shape == (6, tokens, 32)
    assert outputs["attention"][3].shape == (6, 4, tokens, tokens)
    assert [x.shape for x in outputs["qkv"]] == [(6, tokens, 32)] * 3


def test_layer_maps():
    assert default_layer_map(student_layers=2, teacher_layers=6, source_layers=None) == [(0, 2), (1, 5)]
    assert default_layer_map(student_layers=2, teacher_layers=6, source_layers=[0, 5]) == [(0, 0), (1, 5)]
    assert parse_layer_map("0:1, 1:5", student_layers=2, teacher_layers=6) == [(0, 1), (1, 5)]
    for bad in ("0-1", "2:1", "0:6", "0:1,0:2"):
        with pytest.raises(UserError, match="--layer-map"):
            parse_layer_map(bad, student_layers=2, teacher_layers=6)
    teacher = make_classifier("bert", layers=4)
    student = select_layers(teacher, [1, 3])  # a cut student learns from the layers it was cut from
    objective = Objective(DistillConfig(hidden_mse_weight=1), student_config=student.config,
                          teacher_config=teacher.config)
    assert objective.layer_map == [(0, 1), (1, 3)] and not objective.projections


def test_relation_heads_must_divide_both_widths():
    teacher = make_classifier("bert", layers=2, hidden=32, heads=4)
    student = shrunk_student(teacher, "hidden=24,heads=3,layers=1")
    with pytest.raises(UserError, match="--minilm-relation-heads to a common divisor such as 8"):
        Objective(DistillConfig(minilm_weight=1, minilm_relation_heads=5), student_config=student.config,
                  teacher_config=teacher.config)
    objective = Objective(DistillConfig(minilm_weight=1), student_config=student.config,
                          teacher_config=teacher.config)
    assert objective.relation_heads == 4  # the teacher's head count divides both widths


def test_teacher_gets_token_type_ids_that_a_distilbert_student_does_not_take():
    teacher = make_classifier("bert", layers=2)
    with torch.no_grad():  # make segment B matter, so dropping token_type_ids would change logits
        teacher.bert.embeddings.token_type_embeddings.weight[1] += 1.0
    student = make_classifier("distilbert", layers=2)
    batch = _batch(pairs=True)
    assert "token_type_ids" in model_inputs(teacher, batch) and "token_type_ids" not in model_inputs(student, batch)
    outputs = forward_outputs(teacher, batch, Objective(
        DistillConfig(), student_config=student.config, teacher_config=teacher.config).needs("teacher"))
    with torch.no_grad():
        with_segments = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                token_type_ids=batch["token_type_ids"]).logits
        without = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(outputs["logits"], with_segments)
    assert not torch.allclose(with_segments, without)
