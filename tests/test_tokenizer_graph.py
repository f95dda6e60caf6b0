"""The tokenizer inside the graph (export --with-tokenizer): ids equal the Python
tokenizer's on every row it marks exact, logits equal the plain model's, and tokenizers
the operators cannot reproduce are refused by name."""

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime_extensions")

from edgekd.errors import UserError  # noqa: E402
from edgekd.export import tokenizer_graph as graph  # noqa: E402
from edgekd.export.stage import export  # noqa: E402
from edgekd.targets import load_target  # noqa: E402


def _bert_tokenizer(tmp_path, *, lowercase=True, strip_accents=None):
    """A WordPiece tokenizer with accented, CJK and sub-word pieces, saved and reloaded as a user's is."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "unicode", "cafe", "café", "naive", "hello", "world",
             "the", "日", "本", ".", ",", "!", "'", "[", "]", "don", "é", "##é"]
    words += letters + [f"##{letter}" for letter in letters]  # every word of a-z splits into known pieces
    backend = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=strip_accents)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(tmp_path)
    return AutoTokenizer.from_pretrained(tmp_path)


def test_settings_come_from_tokenizer_json_and_strip_accents_follows_lowercase(tmp_path):
    """The converter in onnxruntime-extensions read strip_accents from the Python arguments
    only and kept accents: "Ünïcödé" became [UNK] where the tokenizer gives "unicode"."""
    settings = graph.wordpiece_settings(_bert_tokenizer(tmp_path / "a"))
    assert settings.lowercase and settings.strip_accents  # None: follows lowercase
    cased = graph.wordpiece_settings(_bert_tokenizer(tmp_path / "b", lowercase=False))
    assert not cased.lowercase and not cased.strip_accents
    kept = graph.wordpiece_settings(_bert_tokenizer(tmp_path / "c", strip_accents=False))
    assert kept.lowercase and not kept.strip_accents


def test_ids_equal_the_tokenizer_on_every_exact_row_and_the_rest_are_flagged(tmp_path):
    tokenizer = _bert_tokenizer(tmp_path)
    front = graph.build_front(tokenizer, max_length=16, pair=False, opset=17, ir_version=8)
    assert front.unsafe_characters > 0  # the census found characters the [UNK] test does not flag
    session = graph._session(front.model)
    texts = ["Ünïcödé café", "hello world.", "HELLO", "", "   ", "x" * 40, "日本", "a b c d e f g h i j k l m n o p",
             "tab\tnew\nline", "zero\u200bwidth", "bell\x07", "don't", "[SEP] hello", "ʬ", "xʬ hello"]
    ids, types, mask, exact = session.run(None, graph.string_feeds(texts, None))
    expected = tokenizer(texts, truncation=True, max_length=16, padding=True, return_tensors="np")
    for row, text in enumerate(texts):
        same = ids[row][mask[row] == 1].tolist() == expected["input_ids"][row][expected["attention_mask"][row] == 1].tolist()
        assert same or not exact[row], text  # never wrong and unflagged
    flagged = {text for text, ok in zip(texts, exact) if not ok}
    assert "Ünïcödé café" not in flagged  # accents stripped as the tokenizer strips them
    assert ids[0][:4].tolist() == [2, tokenizer.convert_tokens_to_ids("unicode"), tokenizer.convert_tokens_to_ids("cafe"), 3]
    assert {"[SEP] hello", "ʬ", "xʬ hello"} <= flagged  # a written special token; a character not in the vocabulary
    assert not flagged & {"hello world.", "HELLO", "", "   ", "don't", "a b c d e f g h i j k l m n o p"}
    assert "zero\u200bwidth" not in flagged and "bell\x07" not in flagged  # deleted as BERT's clean_text does
    assert ids.shape[1] == int(mask.sum(1).max())  # padded to the longest row, not to max_length
    # one text per call, of other lengths each time: onnxruntime's memory pattern crashed on such
    # a second call (sessions.register_extensions turns it off)
    for text in sorted(texts, key=len, reverse=True) * 2:
        (one,) = session.run(["input_ids"], graph.string_feeds([text], None))
        assert one.shape[0] == 1


def test_a_tokenizer_the_operators_cannot_reproduce_is_refused_by_name(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE({"a": 0, "b": 1, "ab": 2, "<unk>": 3}, [("a", "b")], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<unk>")
    with pytest.raises(UserError, match=r"cannot be reproduced exactly .*its model is BPE"):
        graph.wordpiece_settings(bpe)


def test_export_with_tokenizer_writes_a_strings_in_model_beside_each_onnx_and_ort_model(tmp_path, test_file):
    from conftest import make_classifier

    from edgekd.data import Columns, load_file
    from edgekd.models import load_classifier, save_model
    from edgekd.sessions import onnx_session

    student = tmp_path / "student"
    tokenizer = _bert_tokenizer(tmp_path / "tok")
    save_model(make_classifier("bert", layers=1, vocab_size=len(tokenizer)), tokenizer, student)
    model, _ = load_classifier(student)
    data = load_file(test_file, columns=Columns(), label2id=model.config.label2id)
    fp32, int8, mobile = export(student, targets=[load_target(name) for name in ("onnx-fp32", "onnx-int8", "ort-mobile")],
                                out=tmp_path / "out", validation=data, with_tokenizer=True)
    for artifact, name in ((fp32, "model.with_tokenizer.onnx"), (int8, "model.with_tokenizer.onnx"),
                           (mobile, "model.with_tokenizer.ort")):
        entry = json.loads((artifact.folder / "edgekd.json").read_text())["with_tokenizer"]
        assert entry["model_file"] == name and (artifact.folder / name).is_file()
        assert entry["custom_ops"]["library"] == "onnxruntime-extensions"
        assert entry["logit_parity"]["predictions_changed"] == 0
        assert entry["token_parity"]["validation data"]["rows"] == len(data)
    session = onnx_session(fp32.folder / "model.with_tokenizer.onnx", custom_ops=True)
    plain = onnx_session(fp32.model_file)
    texts = ["hello world", "Ünïcödé café", "the a b"]
    logits, exact = session.run(["logits", "exact"], graph.string_feeds(texts, None))
    feeds = tokenizer(texts, padding=True, return_tensors="np")
    np.testing.assert_allclose(logits, plain.run(["logits"], {k: v.astype(np.int64) for k, v in feeds.items()})[0],
                               atol=1e-5)
    assert exact.all()
    # an earlier result stays as it was: onnxruntime reused the buffer of a result it had handed out
    kept = logits.copy()
    session.run(["logits", "exact"], graph.string_feeds(["the a b world hello"] * 5, None))
    np.testing.assert_array_equal(logits, kept)
    assert "BertTokenizer" in (mobile.folder / "required_operators.with_tokenizer.config").read_text()


def test_with_tokenizer_refuses_an_executorch_target_before_any_work(student_dir, tmp_path):
    with pytest.raises(UserError, match="--with-tokenizer serves ONNX and .ort targets"):
        export(student_dir, targets=[load_target("executorch")], out=tmp_path / "o", with_tokenizer=True)
    assert not (tmp_path / "o").exists()


def test_a_pair_task_is_refused_before_any_work(tmp_path):
    """The pair graph gave the Python tokenizer's ids one pair at a time but not for every row
    of a batch (a row lost its first two tokens): refused by name, never shipped."""
    from conftest import make_classifier, make_rows, write_jsonl

    from edgekd.data import Columns, load_file
    from edgekd.models import load_classifier, save_model

    student = tmp_path / "student"
    tokenizer = _bert_tokenizer(tmp_path / "tok")
    save_model(make_classifier("bert", layers=1, vocab_size=len(tokenizer)), tokenizer, student)
    rows = [{**row, "second": "hello world"} for row in make_rows(8, seed=3)]
    model, _ = load_classifier(student)
    data = load_file(write_jsonl(rows, tmp_path / "pairs.jsonl"), columns=Columns(text_pair="second"),
                     label2id=model.config.label2id)
    with pytest.raises(UserError, match="--with-tokenizer serves single-text classifiers"):
        export(student, targets=[load_target("onnx-fp32")], out=tmp_path / "out", validation=data,
               with_tokenizer=True)
    assert not (tmp_path / "out").exists()
