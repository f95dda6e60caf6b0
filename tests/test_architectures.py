"""Model families through distill -> export -> bench on the command line, with tiny random
configs: the exported graph takes whatever inputs the model uses (DeBERTa-v2 without token
types takes no token_type_ids), ALBERT's shared layer group is cut by running it fewer
times, and decoders other than Llama (Qwen2, GPT-2) take the causal-LM path."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from conftest import make_classifier, make_rows, make_tokenizer, run_cli as run, write_jsonl

ARCHITECTURES = ["bert", "distilbert", "roberta", "xlm-roberta", "electra", "deberta-v2", "albert", "modernbert",
                 "mobilebert"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("architectures")
    return (write_jsonl(make_rows(48, seed=1), folder / "train.jsonl"),
            write_jsonl(make_rows(24, seed=2), folder / "test.jsonl"))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_distill_export_bench(arch, files, tmp_path):
    # setup
    train, test = files
    teacher = tmp_path / "teacher"
    make_classifier(arch, layers=4).save_pretrained(teacher)
    make_tokenizer().save_pretrained(teacher)
    student, export, report = tmp_path / "student", tmp_path / "export", tmp_path / "report"
    # execute: hidden-state and attention losses run on every family
    result = run("distill", "--teacher", teacher, "--data", train, "--out", student, "--student-layers", "2",
                 "--epochs", "1", "--max-length", "32", "--hidden-mse-weight", "1", "--attention-weight", "1",
                 "--cache-dir", tmp_path / "cache", "--quiet")
    assert result.exit_code == 0, result.output
    result = run("export", student, "--target", "onnx-fp32", "--target", "onnx-int8", "--target", "onnx-int4",
                 "--data", test, "--out", export)
    assert result.exit_code == 0, result.output
    result = run("bench", "--teacher", teacher, "--student", student, "--artifacts", export, "--data", test,
                 "--repeats", "3", "--no-memory", "--no-roofline", "--no-plot", "--max-length", "32",
                 "--sequence-length", "16", "--out", report)
    # assert
    assert result.exit_code == 0, result.output
    config = json.loads((student / "config.json").read_text())
    assert config.get("num_hidden_layers", config.get("n_layers")) == 2
    model_inputs = {i.name for i in onnx.load(str(export / "onnx-fp32" / "model.onnx")).graph.input}
    manifest = json.loads((export / "onnx-fp32" / "edgekd.json").read_text())
    assert set(manifest["inputs"]) == model_inputs  # the graph's own inputs, never assumed
    assert manifest["parity"]["max_abs_diff"] <= 1e-4
    rows = {row["name"]: row for row in json.loads((report / "report.json").read_text())["rows"]}
    assert rows["student/onnx-fp32"]["quality"]["accuracy"] == rows["student"]["quality"]["accuracy"]
    assert {"student/onnx-int8", "student/onnx-int4"} <= set(rows)


def test_deberta_v2_without_token_types_takes_no_token_type_ids(files, tmp_path):
    train, test = files
    teacher = tmp_path / "teacher"
    make_classifier("deberta-v2", layers=2).save_pretrained(teacher)  # type_vocab_size 0
    make_tokenizer().save_pretrained(teacher)
    assert run("export", teacher, "--target", "onnx-fp32", "--out", tmp_path / "e").exit_code == 0
    graph = onnx.load(str(tmp_path / "e" / "onnx-fp32" / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]


def test_albert_keeps_its_shared_weights_and_runs_them_fewer_times(tmp_path):
    from edgekd.models import layer_count
    from edgekd.tasks.text_classification import make_student

    teacher = make_classifier("albert", layers=6)
    student, _ = make_student(teacher, make_tokenizer(), layers="0,5")
    assert layer_count(student) == 2 and student.config.edgekd_source_layers == [0, 5]
    shared = "albert.encoder.albert_layer_groups.0.albert_layers.0.attention.query.weight"
    assert (student.state_dict()[shared] == teacher.state_dict()[shared]).all()
    grouped = make_classifier("albert", layers=4)
    grouped.config.num_hidden_groups = 2  # the layer list is read per group, so only the count matters here
    with pytest.raises(Exception, match="runs 2 shared layer groups: a student keeps a multiple of 2 layers, not 3"):
        make_student(grouped, make_tokenizer(), layers="3")


def _decoder(arch: str):
    """Tiny random decoders of other families than Llama, with the word-level test tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=52, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    if arch == "gpt2":
        config = AutoConfig.for_model("gpt2", n_layer=3, n_embd=32, n_head=4, n_positions=128, **common)
    else:
        config = AutoConfig.for_model(arch, num_hidden_layers=3, hidden_size=32, intermediate_size=64,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      **common)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_decoders_beyond_llama_distill_export_bench(arch, tmp_path):
    from lm_tiny import make_lm_tokenizer, make_texts

    teacher = tmp_path / "teacher"
    _decoder(arch).save_pretrained(teacher)
    make_lm_tokenizer().save_pretrained(teacher)
    (tmp_path / "train.txt").write_text("\n".join(make_texts(16)))
    (tmp_path / "test.txt").write_text("\n".join(make_texts(4, seed=2)))
    result = run("distill", "--teacher", teacher, "--data", tmp_path / "train.txt", "--out", tmp_path / "s",
                 "--student-layers", "2", "--max-steps", "3", "--batch-size", "4", "--max-length", "24",
                 "--top-k", "8", "--cache-dir", tmp_path / "cache", "--quiet")
    assert result.exit_code == 0, result.output
    result = run("export", tmp_path / "s", "--target", "onnx-fp32", "--target", "onnx-int8", "--max-length", "48",
                 "--max-perplexity-ratio", "100", "--out", tmp_path / "e")
    assert result.exit_code == 0, result.output
    assert "onnx-fp32" in result.output and "greedy tokens equal to PyTorch: 100%" in result.output
    result = run("bench", "--teacher", teacher, "--student", tmp_path / "s", "--artifacts", tmp_path / "e",
                 "--data", tmp_path / "test.txt", "--new-tokens", "4", "--rounds", "1", "--max-perplexity-ratio", "100",
                 "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads((tmp_path / "r" / "report.json").read_text())["rows"]}
    assert rows["student/onnx-fp32"]["quality"]["perplexity"] == pytest.approx(
        rows["student"]["quality"]["perplexity"], rel=1e-3)
