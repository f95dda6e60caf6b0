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


# ---------------------------------------------------------------------------- students, three ways

from conftest import make_tokenizer
from edgekd.tasks.text_classification import make_student
from edgekd.models import (check_compatible, find_attention_projections,
                           parse_student_config, shrunk_student)

ARCHITECTURES = ["bert", "distilbert", "roberta", "electra"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_attention_projections_are_found_generically(arch):
    model = make_classifier(arch, layers=2, hidden=32)
    query, key, value = find_attention_projections(model, 1)
    assert len({id(query), id(key), id(value)}) == 3
    assert query.in_features == 32 and value.out_features == 32


def test_missing_attention_projections_name_what_is_missing():
    model = make_classifier("bert", layers=2)
    _, layers = find_layer_list(model)
    layers[0].attention.self.query = torch.nn.Identity()
    with pytest.raises(UserError, match="cannot find the query projection.* layer 0 of Bert"):
        find_attention_projections(model, 0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shrunk_student_has_the_asked_shape_and_reloads_without_edgekd(arch, tmp_path, tokenizer):
    teacher = make_classifier(arch, layers=4, hidden=32, heads=4)
    student, student_tokenizer = make_student(teacher, tokenizer, init="random",  # sliced: tests/test_slicing.py
                                              config_spec="hidden=16,layers=2,heads=2,intermediate=24")
    config = student.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (16, 2, 2)
    assert len(find_layer_list(student)[1]) == 2 and student_tokenizer is tokenizer
    save_model(student, tokenizer, tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert reloaded.config.id2label == teacher.config.id2label
    assert sum(p.numel() for p in reloaded.parameters()) < sum(p.numel() for p in teacher.parameters())


def test_shrunk_student_keeping_the_width_inherits_the_embeddings(tokenizer):
    teacher = make_classifier("bert", layers=4, hidden=32)
    student = shrunk_student(teacher, "layers=2,intermediate=64")
    torch.testing.assert_close(student.bert.embeddings.word_embeddings.weight,
                               teacher.bert.embeddings.word_embeddings.weight)
    assert not torch.equal(student.bert.encoder.layer[0].attention.self.query.weight,
                           teacher.bert.encoder.layer[0].attention.self.query.weight)  # random layers


def test_student_config_spec_errors():
    assert parse_student_config("hidden=256, layers=4") == {"hidden": 256, "layers": 4}
    for bad in ("width=3", "hidden=", "layers=0", "", "hidden=abc"):
        with pytest.raises(UserError, match="--student-config"):
            parse_student_config(bad)
    teacher = make_classifier("bert", layers=4, hidden=32, heads=4)
    with pytest.raises(UserError, match="must not be deeper"):
        shrunk_student(teacher, "layers=6")
    with pytest.raises(UserError, match="not divisible by heads=3"):
        shrunk_student(teacher, "hidden=32,heads=3")


def test_given_student_plain_encoder_gets_the_teachers_labels(tmp_path, tokenizer):
    from transformers import DistilBertConfig, DistilBertModel

    teacher = make_classifier("bert", layers=4)
    DistilBertModel(DistilBertConfig(vocab_size=80, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                     max_position_embeddings=128)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    student, _ = make_student(teacher, tokenizer, model=tmp_path)
    assert student.config.id2label == teacher.config.id2label
    assert type(student).__name__ == "DistilBertForSequenceClassification"


@pytest.mark.parametrize("case", ["vocabulary", "embedding rows", "labels", "deeper", "two ways"])
def test_incompatible_students_are_refused_before_training(case, tokenizer):
    teacher = make_classifier("bert", layers=2)
    student, student_tokenizer = make_classifier("bert", layers=2, seed=1), make_tokenizer()
    expected = {"vocabulary": "tokenizers differ", "embedding rows": "embed 80 and 90 token ids",
                "labels": "labels .* differ", "deeper": "must not be deeper",
                "two ways": "exactly one way"}[case]
    if case == "vocabulary":
        student_tokenizer.add_tokens(["extra"])
    elif case == "embedding rows":
        student = make_classifier("bert", layers=2, vocab_size=90)
    elif case == "labels":
        student = make_classifier("bert", layers=2, num_labels=2)
    elif case == "deeper":
        student = make_classifier("bert", layers=3)
    with pytest.raises(UserError, match=expected):
        if case == "two ways":
            make_student(teacher, tokenizer, model="some-model", config_spec="layers=1")
        else:
            check_compatible(teacher, tokenizer, student, student_tokenizer)


def test_given_student_with_layers_cuts_the_given_model(tmp_path, tokenizer):
    # e.g. two layers of the pretrained encoder the teacher was fine-tuned from
    from transformers import BertConfig, BertModel

    teacher = make_classifier("bert", layers=4)
    pretrained = BertModel(BertConfig(vocab_size=80, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=130))
    pretrained.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    student, _ = make_student(teacher, tokenizer, model=tmp_path, layers="0,3")
    assert student.config.num_hidden_layers == 2 and student.config.edgekd_source_layers == [0, 3]
    torch.testing.assert_close(student.bert.encoder.layer[1].output.dense.weight,
                               pretrained.encoder.layer[3].output.dense.weight)
    assert student.config.id2label == teacher.config.id2label
