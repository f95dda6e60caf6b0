"""Loading causal LMs and making students: layer selection, shrunk config, given; vocab checks."""

from __future__ import annotations

import pytest
import torch

from edgekd.errors import UserError
from edgekd.lm.models import load_causal_lm, make_lm_student, shared_vocabulary
from lm_tiny import make_llama, make_lm_tokenizer, make_texts, save_llama


@pytest.fixture
def teacher_folder(tmp_path):
    return save_llama(tmp_path / "teacher", layers=4)


def test_layer_selection_student_matches_teacher_layers(teacher_folder):
    teacher, tokenizer = load_causal_lm(teacher_folder)
    student, _ = make_lm_student(teacher, tokenizer, layers="0,3")
    assert student.config.num_hidden_layers == 2
    ids = torch.tensor([[2, 10, 11, 12, 13]])
    # the KV cache is indexed by the renumbered layer_idx: cached decoding equals a full pass
    full = student(ids).logits[:, -1]
    prefix = student(ids[:, :-1], use_cache=True)
    step = student(ids[:, -1:], past_key_values=prefix.past_key_values).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-4, rtol=1e-4)
    layers = student.model.layers
    torch.testing.assert_close(layers[1].mlp.up_proj.weight, teacher.model.layers[3].mlp.up_proj.weight)


def test_shrunk_student_keeps_embeddings(teacher_folder):
    teacher, tokenizer = load_causal_lm(teacher_folder)
    student, _ = make_lm_student(teacher, tokenizer, config_spec="layers=2,intermediate=16", init="random")
    assert student.config.num_hidden_layers == 2 and student.config.intermediate_size == 16
    torch.testing.assert_close(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)


def test_given_student_with_padded_vocabulary_shares_rows(teacher_folder, tmp_path):
    teacher, tokenizer = load_causal_lm(teacher_folder)
    given = save_llama(tmp_path / "student", layers=1, vocab_size=64)
    student, student_tokenizer = make_lm_student(teacher, tokenizer, model=str(given))
    assert shared_vocabulary(teacher, tokenizer, student, student_tokenizer) == 52


def test_different_tokenizers_are_refused(teacher_folder, tmp_path):
    teacher, tokenizer = load_causal_lm(teacher_folder)
    other = tmp_path / "other"
    make_llama(layers=1, vocab_size=53).save_pretrained(other)
    make_lm_tokenizer(extra_words=("zebra",)).save_pretrained(other)
    with pytest.raises(UserError, match="tokenizers differ"):
        make_lm_student(teacher, tokenizer, model=str(other))


def test_a_classifier_is_not_a_causal_lm(teacher_dir):
    with pytest.raises(UserError, match="not a causal language model"):
        load_causal_lm(teacher_dir)


def test_corrupt_gguf_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    broken = tmp_path / "model.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(UserError, match="corrupt") as caught:
        load_causal_lm(broken)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "cache" / "gguf").exists() or not any((tmp_path / "cache" / "gguf").iterdir())


def test_missing_gguf(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_causal_lm(tmp_path / "absent.gguf")


def test_student_made_exactly_one_way(teacher_folder):
    teacher, tokenizer = load_causal_lm(teacher_folder)
    with pytest.raises(UserError, match="exactly one way"):
        make_lm_student(teacher, tokenizer, model="some-model", config_spec="layers=1")


def test_layer_selection_keeps_each_layers_attention_type(tmp_path):
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=52, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                         sliding_window=4, max_window_layers=2)
    teacher = AutoModelForCausalLM.from_config(config).eval()
    student, _ = make_lm_student(teacher, make_lm_tokenizer(), layers="0,3")
    assert student.config.layer_types == ["full_attention", "sliding_attention"]
    student.save_pretrained(tmp_path / "student")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
    ids = torch.tensor([[2, 10, 11, 12, 13, 14, 15, 16, 17]])
    torch.testing.assert_close(reloaded(ids).logits, student(ids).logits)


def _probe(tokenizer, count: int = 6):
    from edgekd.lm.data import collate, encode_texts

    examples = encode_texts(make_texts(count, seed=3), tokenizer, max_length=32)
    return collate(examples, list(range(len(examples))))


def test_a_layer_count_drops_the_block_that_changes_the_hidden_state_least():
    """Layers 2 and 3 are made identities (their attention and MLP outputs zeroed, so the
    residual passes through): keeping 4 of 6 must drop exactly them, and the student then
    predicts exactly as the teacher does."""
    from edgekd.lm.models import redundant_block

    teacher, tokenizer = make_llama(layers=6), make_lm_tokenizer()
    with torch.no_grad():
        for index in (2, 3):
            teacher.model.layers[index].self_attn.o_proj.weight.zero_()
            teacher.model.layers[index].mlp.down_proj.weight.zero_()
    probe = _probe(tokenizer)
    assert redundant_block(teacher, probe, keep=4) == [0, 1, 4, 5]
    student, _ = make_lm_student(teacher, tokenizer, layers="4", probe=probe)
    with torch.no_grad():
        inputs = {"input_ids": probe["input_ids"], "attention_mask": probe["attention_mask"]}
        assert torch.allclose(student(**inputs).logits, teacher(**inputs).logits, atol=1e-5)


def test_the_last_layer_is_always_kept_and_indices_are_taken_as_given():
    from edgekd.lm.models import redundant_block

    teacher, tokenizer = make_llama(layers=6), make_lm_tokenizer()
    with torch.no_grad():  # the last two layers are identities, but the last one must stay
        for index in (4, 5):
            teacher.model.layers[index].self_attn.o_proj.weight.zero_()
            teacher.model.layers[index].mlp.down_proj.weight.zero_()
    probe = _probe(tokenizer)
    kept = redundant_block(teacher, probe, keep=4)
    assert kept[-1] == 5 and len(kept) == 4
    student, _ = make_lm_student(teacher, tokenizer, layers="0,2,4,5", probe=probe)
    assert len(student.model.layers) == 4
    assert torch.equal(student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[2].mlp.up_proj.weight)
