import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import make_classifier
from edgekd.errors import UserError
from edgekd.models import (evenly_spaced, find_layer_list, load_classifier, parse_layers,
                           save_model, select_layers)


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta", "electra"])
def test_layer_list_is_found_generically(arch):
    model = make_classifier(arch, layers=4)
    name, layers = find_layer_list(model)
    assert len(layers) == 4 and "layer" in name


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta", "electra"])
def test_select_layers_copies_chosen_layers_and_reloads_without_edgekd(arch, tmp_path, tokenizer):
    teacher = make_classifier(arch, layers=4)
    student = select_layers(teacher, [1, 3])
    _, teacher_layers = find_layer_list(teacher)
    _, student_layers = find_layer_list(student)
    for mine, theirs in zip(student_layers, [teacher_layers[1], teacher_layers[3]]):
        for a, b in zip(mine.parameters(), theirs.parameters()):
            assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()  # a copy, not shared
    save_model(student, tokenizer, tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager")
    assert reloaded.config.num_hidden_layers == 2
    assert reloaded.config.id2label == teacher.config.id2label
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    torch.testing.assert_close(reloaded(input_ids=ids).logits, student.eval()(input_ids=ids).logits)


def test_layer_spec_parsing():
    assert evenly_spaced(2, 6) == [0, 5] and evenly_spaced(3, 6) == [0, 2, 5]
    assert parse_layers("2", 6) == [0, 5]
    assert parse_layers("5,0,3", 6) == [0, 3, 5]
    for bad in ("0", "7", "1,1", "0,6", "two"):
        with pytest.raises(UserError, match="--student-layers"):
            parse_layers(bad, 6)


def test_loading_rejects_non_classifiers_and_non_model_folders(tmp_path, tokenizer):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=80, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=64)).save_pretrained(tmp_path / "encoder")
    with pytest.raises(UserError, match="not a sequence classifier"):
        load_classifier(tmp_path / "encoder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a model folder"):
        load_classifier(tmp_path / "empty")
