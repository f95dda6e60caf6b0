"""Width slicing: hidden channels, heads and FFN neurons cut from the teacher by importance."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_classifier, make_rows, make_tokenizer, run_cli, write_jsonl
from edgekd.data import TextDataset, sample_batches
from edgekd.errors import UserError
from edgekd.metrics import near_chance
from edgekd.models import model_inputs
from edgekd.slicing import BERT, LLAMA, MPNET, configured_student, importance, kept_indices, sliced_student, student_shape
from lm_tiny import make_llama, make_lm_tokenizer, make_texts

ENCODERS = ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "mpnet"]


def _probe(tokenizer, count=24, seed=0):
    rows = make_rows(count, seed=seed)
    data = TextDataset([r["text"] for r in rows], [0] * count, ["a"])
    return sample_batches(data, tokenizer, max_length=32, batch_size=8)


def _decoder(arch: str):
    if arch == "llama":
        return make_llama(layers=3, hidden=32, heads=4, kv_heads=2)
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(arch, vocab_size=52, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                  pad_token_id=0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


def _lm_probe():
    tokenizer = make_lm_tokenizer()
    encoded = tokenizer(make_texts(12), padding=True, return_tensors="pt")
    return [{"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}]


@pytest.mark.parametrize("arch", ENCODERS)
def test_slicing_nothing_away_reproduces_the_teacher_exactly(arch):
    teacher = make_classifier(arch, layers=3)
    probe = _probe(make_tokenizer())  # BERT's tokenizer gives token types, which DistilBERT does not take
    config = teacher.config
    full = {"hidden": config.hidden_size, "heads": config.num_attention_heads,
            "intermediate": getattr(config, "intermediate_size", None) or config.hidden_dim}
    student = sliced_student(teacher, full, probe)
    with torch.no_grad():
        for batch in probe:
            inputs = model_inputs(teacher, batch)
            assert torch.equal(student(**inputs).logits, teacher(**inputs).logits)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_a_decoder_sliced_with_nothing_away_is_the_teacher_and_keeps_whole_kv_groups(arch):
    teacher, probe = _decoder(arch), _lm_probe()
    full = sliced_student(teacher, {"hidden": 32, "heads": 4, "intermediate": 64}, probe)
    with torch.no_grad():
        assert torch.equal(full(**probe[0]).logits, teacher(**probe[0]).logits)
    half = sliced_student(teacher, {"hidden": 16, "heads": 2, "intermediate": 32}, probe)
    config = half.config
    assert (config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim,
            config.intermediate_size) == (16, 2, 1, 8, 32)
    # the two kept query heads are the pair that shares the kept key/value head
    family_indices = kept_indices(teacher, student_shape(teacher, LLAMA, {"hidden": 16, "heads": 2, "intermediate": 32}),
                                  importance(teacher, LLAMA, probe))
    for layer in range(3):
        query_heads = sorted({int(i) // 8 for i in family_indices["heads"][layer]})
        (group,) = sorted({int(i) // 8 for i in family_indices["kv"][layer]})
        assert query_heads == [2 * group, 2 * group + 1]
    with torch.no_grad():
        assert torch.isfinite(half(**probe[0]).logits).all()


def test_the_ranking_keeps_a_planted_strong_neuron_and_head_and_drops_dead_ones():
    teacher = make_classifier("bert", layers=2)
    layer = teacher.bert.encoder.layer[0]
    with torch.no_grad():
        layer.intermediate.dense.weight[5].zero_()  # neuron 5 never fires: its input to the down projection is 0
        layer.intermediate.dense.bias[5] = -10.0
        layer.intermediate.dense.weight[7] *= 50  # neuron 7 is loud
        value = layer.attention.self.value
        value.weight[8:16].zero_()  # head 1 (channels 8-15) outputs nothing
        value.bias[8:16].zero_()
        value.weight[16:24] *= 50  # head 2 is loud
    probe = _probe(make_tokenizer())
    student = sliced_student(teacher, {"hidden": 16, "heads": 2, "intermediate": 32}, probe)
    indices = kept_indices(teacher, student_shape(teacher, BERT, {"hidden": 16, "heads": 2, "intermediate": 32}),
                           importance(teacher, BERT, probe))
    assert 7 in indices["ffn"][0].tolist() and 5 not in indices["ffn"][0].tolist()
    heads = sorted({i // 8 for i in indices["heads"][0].tolist()})
    assert 2 in heads and 1 not in heads
    assert student.config.hidden_size == 16 and student.config.num_attention_heads == 2


def test_mpnet_keeps_the_same_heads_in_every_layer_and_their_columns_of_the_shared_position_bias():
    teacher = make_classifier("mpnet", layers=3)
    with torch.no_grad():  # head 3 is loud in layer 1 only, head 0 silent in layer 0 only
        teacher.mpnet.encoder.layer[1].attention.attn.v.weight[24:32] *= 50
        teacher.mpnet.encoder.layer[0].attention.attn.v.weight[0:8].zero_()
        teacher.mpnet.encoder.layer[0].attention.attn.v.bias[0:8].zero_()
    probe = _probe(make_tokenizer())
    wanted = {"hidden": 16, "heads": 2, "intermediate": 64}
    found = importance(teacher, MPNET, probe)
    indices = kept_indices(teacher, student_shape(teacher, MPNET, wanted), found, shared_heads=True)
    total = sum(found.heads.values())
    best = sorted(sorted(range(4), key=lambda head: -float(total[head]))[:2])
    assert 3 in best
    assert indices["head ids"].tolist() == best
    for layer in range(3):  # one choice for all layers, by the summed importance
        assert sorted({int(i) // 8 for i in indices["heads"][layer]}) == best
    student = sliced_student(teacher, wanted, probe)
    bias = teacher.mpnet.encoder.relative_attention_bias.weight
    assert torch.equal(student.mpnet.encoder.relative_attention_bias.weight, bias[:, best])
    assert student.config.num_attention_heads == 2 and student.config.hidden_size == 16
    with torch.no_grad():
        assert torch.isfinite(student(**probe[0]).logits).all()


def test_a_sliced_student_is_a_stock_model_that_transformers_reloads(tmp_path):
    from transformers import AutoModelForSequenceClassification

    teacher = make_classifier("roberta", layers=4)
    probe = _probe(make_tokenizer())
    student = configured_student(teacher, "hidden=16,layers=2,intermediate=48", probe=probe)
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert (reloaded.config.num_hidden_layers, reloaded.config.hidden_size, reloaded.config.num_attention_heads,
            reloaded.config.intermediate_size) == (2, 16, 2, 48)
    with torch.no_grad():
        assert torch.equal(reloaded(**probe[0]).logits, student(**probe[0]).logits)


def test_shapes_a_slice_cannot_keep_are_one_line_each():
    teacher, probe = make_classifier("bert", layers=2), _probe(make_tokenizer())
    cases = {"hidden=20": "not a multiple of the teacher's head size (8)",
             "hidden=16,heads=4": "hidden=16 needs heads=2",
             "intermediate=999": "wider than the teacher's 128"}
    for spec, message in cases.items():
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            configured_student(teacher, spec, probe=probe)
    with pytest.raises(UserError, match="--student-init must be one of slice, random"):
        configured_student(teacher, "hidden=16", init="lottery", probe=probe)


def test_distill_slices_by_default_and_random_on_request(teacher_dir, tmp_path):
    train = write_jsonl(make_rows(48, seed=4), tmp_path / "train.jsonl")
    common = ["--data", train, "--student-config", "hidden=16,layers=2,intermediate=32", "--epochs", "1",
              "--batch-size", "8", "--max-length", "32", "--quiet", "--cache-dir", tmp_path / "cache"]
    sliced = run_cli("distill", "--teacher", teacher_dir, "--out", tmp_path / "sliced", *common)
    assert sliced.exit_code == 0, sliced.output
    config = json.loads((tmp_path / "sliced" / "config.json").read_text())
    assert (config["hidden_size"], config["num_attention_heads"], config["num_hidden_layers"]) == (16, 2, 2)
    assert config["edgekd_source_layers"] == [0, 3]
    random_init = run_cli("distill", "--teacher", teacher_dir, "--out", tmp_path / "random", "--student-init",
                          "random", *common)
    assert random_init.exit_code == 0, random_init.output
    export = run_cli("export", tmp_path / "sliced", "--target", "onnx-fp32", "--out", tmp_path / "export")
    assert export.exit_code == 0, export.output  # parity with PyTorch within the fp32 tolerance
    picked = run_cli("distill", "--teacher", teacher_dir, "--out", tmp_path / "picked", "--student-layers", "1,2",
                     *common[:2], "--student-config", "hidden=16", *common[4:])
    assert picked.exit_code == 0, picked.output
    assert json.loads((tmp_path / "picked" / "config.json").read_text())["edgekd_source_layers"] == [1, 2]


def test_a_causal_lm_student_config_is_sliced_from_the_teacher(tmp_path):
    from lm_tiny import save_llama

    teacher = save_llama(tmp_path / "teacher", layers=4)
    (tmp_path / "train.txt").write_text("\n".join(make_texts(16)))
    result = run_cli("distill", "--teacher", teacher, "--data", tmp_path / "train.txt", "--out", tmp_path / "s",
                     "--student-config", "hidden=16,heads=2,layers=2", "--max-steps", "2", "--batch-size", "4",
                     "--max-length", "24", "--top-k", "8", "--cache-dir", tmp_path / "cache", "--quiet")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert (config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"],
            config["num_hidden_layers"]) == (16, 2, 1, 2)


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory):
    """A tiny BERT fine-tuned on the keyword task: well above chance, as a real teacher is."""
    from edgekd.config import DistillConfig
    from edgekd.training.train import distill

    from conftest import LABELS

    from transformers import AutoModelForSequenceClassification

    from conftest import make_config

    folder = tmp_path_factory.mktemp("trained") / "teacher"
    rows = make_rows(192, seed=7)
    data = TextDataset([r["text"] for r in rows], [LABELS.index(r["label"]) for r in rows], list(LABELS))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(make_config("bert", layers=2), attn_implementation="eager")
    held_out = make_rows(60, seed=9)
    validation = TextDataset([r["text"] for r in held_out], [LABELS.index(r["label"]) for r in held_out], list(LABELS))
    result = distill(teacher=None, student=model, tokenizer=make_tokenizer(), train=data, validation=validation,
                     out=folder, show_progress=False,
                     config=DistillConfig(epochs=6, lr=3e-3, batch_size=16, max_length=32, warmup_fraction=0.0))
    assert result.validation["accuracy"] > 0.6  # beyond two standard errors of guessing on 60 rows
    return folder


def test_near_chance_is_two_standard_errors_of_guessing_the_most_common_label():
    labels = [0] * 30 + [1] * 20 + [2] * 10  # guess 50%, two standard errors 12.9 points
    assert "within noise" in near_chance(0.62, teacher_accuracy=0.9, labels=labels)
    assert near_chance(0.63, teacher_accuracy=0.9, labels=labels) is None
    assert near_chance(0.5, teacher_accuracy=0.6, labels=labels) is None  # the teacher is no better
    assert near_chance(0.3, teacher_accuracy=0.9, labels=labels[:29]) is None  # too few rows to tell
    assert near_chance(0.3, teacher_accuracy=None, labels=labels) is None


def test_a_student_left_at_chance_fails_loudly_unless_allowed(trained_teacher, tmp_path):
    train = write_jsonl(make_rows(96, seed=8), tmp_path / "train.jsonl")
    validation = write_jsonl(make_rows(60, seed=9), tmp_path / "validation.jsonl")  # the teacher's held-out rows
    common = ["--teacher", trained_teacher, "--data", train, "--validation-data", validation,
              "--student-config", "hidden=16,layers=1", "--student-init", "random", "--epochs", "1",
              "--batch-size", "16", "--max-length", "32", "--quiet", "--cache-dir", tmp_path / "cache"]
    useless = run_cli("distill", *common, "--lr", "1e-9", "--out", tmp_path / "useless")
    assert useless.exit_code == 2, useless.output
    last = [line for line in useless.output.splitlines() if line.strip()][-1]
    assert last.startswith("error: the student learnt nothing useful") and "--allow-poor-student" in last
    assert (tmp_path / "useless" / "model.safetensors").is_file()  # nothing lost: the student is kept
    allowed = run_cli("distill", *common, "--lr", "1e-9", "--out", tmp_path / "allowed", "--allow-poor-student")
    assert allowed.exit_code == 0, allowed.output
    default_lr = run_cli("distill", *common, "--out", tmp_path / "default")
    assert "random weights, so --lr 0.001" in default_lr.output
    records = [json.loads(line) for line in (tmp_path / "default" / "metrics.jsonl").read_text().splitlines()]
    assert max(record.get("lr", 0) for record in records) == pytest.approx(1e-3)  # the peak of the schedule


def test_a_sliced_student_defaults_to_the_sliced_learning_rate_and_a_layer_cut_keeps_lr(trained_teacher, tmp_path):
    train = write_jsonl(make_rows(48, seed=8), tmp_path / "train.jsonl")
    common = ["--teacher", trained_teacher, "--data", train, "--epochs", "1", "--batch-size", "16",
              "--max-length", "32", "--quiet", "--cache-dir", tmp_path / "cache", "--allow-poor-student"]

    def peak_lr(folder):
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return max(record.get("lr", 0) for record in records)

    sliced = run_cli("distill", *common, "--student-config", "hidden=16,layers=1", "--out", tmp_path / "sliced")
    assert sliced.exit_code == 0, sliced.output
    assert "sliced from the teacher, so --lr 0.0003" in sliced.output
    assert peak_lr(tmp_path / "sliced") == pytest.approx(3e-4)
    cut = run_cli("distill", *common, "--student-config", "layers=1", "--out", tmp_path / "cut")
    assert cut.exit_code == 0, cut.output
    assert "so --lr" not in cut.output and peak_lr(tmp_path / "cut") == pytest.approx(1e-4)
    chosen = run_cli("distill", *common, "--student-config", "hidden=16,layers=1", "--lr", "5e-5",
                     "--out", tmp_path / "chosen")
    assert chosen.exit_code == 0 and peak_lr(tmp_path / "chosen") == pytest.approx(5e-5)
