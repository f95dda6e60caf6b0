"""The tokenizer inside the graph (export --with-tokenizer): ids equal the Python
tokenizer's on every row it marks exact, logits equal the plain model's, and tokenizers
the operators cannot reproduce are refused by name."""

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime_extensions")

from edgekd.errors import UserError  # noqa: E402
from edgekd.exporting import tokenizer_graph as graph  # noqa: E402
from edgekd.exporting.stage import export  # noqa: E402
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
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])
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
    # the regex that deletes what the operator keeps runs only for a batch holding one of its
    # first bytes; a batch of one text takes the operator without a Loop: both give the same ids
    for text in ("hello\ufeff world", "hello world", "bom\ufeff", "del\x7f x", "café\ue000 ok", "日本 hello"):
        one, _, one_mask, one_exact = session.run(None, graph.string_feeds([text], None))
        reference = tokenizer([text], truncation=True, max_length=16)["input_ids"][0]
        assert one_exact[0] and one[0][one_mask[0] == 1].tolist() == reference, text
    assert ids.shape[1] == int(mask.sum(1).max())  # padded to the longest row, not to max_length
    # one text per call, of other lengths each time: onnxruntime's memory pattern crashed on such
    # a second call (sessions.register_extensions turns it off)
    for text in sorted(texts, key=len, reverse=True) * 2:
        (one,) = session.run(["input_ids"], graph.string_feeds([text], None))
        assert one.shape[0] == 1


def test_the_operator_is_asked_for_no_offsets():
    """With the offset-mapping output, BertTokenizer wrote the offsets of every token of a text
    longer than max_length (and of a pair: always one more) past the end of a buffer sized for
    the truncated ids: onnxruntime's memory pattern then crashed, and a batch's rows lost tokens."""
    settings = graph.WordPieceSettings(vocab=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"], lowercase=True,
                                       strip_accents=True, handle_chinese_chars=True, unk_token="[UNK]",
                                       cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", pad_id=0,
                                       mask_token="[MASK]")
    for pair in (False, True):
        model = graph.tokenizer_model(settings, max_length=8, pair=pair, opset=17, ir_version=8)
        operators = [node for node in _all_nodes(model.graph) if node.op_type == "BertTokenizer"]
        assert len(operators) == 2 and all(len(node.output) == 3 for node in operators)  # one row, and the Loop's


def _all_nodes(g):
    for node in g.node:
        yield node
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _all_nodes(attribute.g)


def test_pairs_are_cut_as_the_tokenizer_cuts_them_at_every_pair_of_lengths(tmp_path):
    """The operator does not truncate a pair at all: the graph cuts it by the tokenizers
    library's longest_first rule, checked here for every pair of lengths up to past
    max_length, in one batch and one row at a time."""
    tokenizer = _bert_tokenizer(tmp_path)
    max_length = 13  # an even budget for A and B (10) and, below, an odd one (9)
    for length in (max_length, max_length + 1):
        front = graph.build_front(tokenizer, max_length=length, pair=True, opset=17, ir_version=8)
        session = graph._session(front.model)
        firsts, seconds = zip(*[(" ".join("ab"[i % 2] for i in range(a)), " ".join("cd"[i % 2] for i in range(b)))
                                for a in range(0, 16) for b in range(1, 16)])
        expected = tokenizer(list(firsts), list(seconds), truncation=True, max_length=length, return_token_type_ids=True)
        ids, types, mask, exact = session.run(None, graph.string_feeds(list(firsts), list(seconds)))
        assert exact.all()
        for row in range(len(firsts)):
            assert ids[row][mask[row] == 1].tolist() == expected["input_ids"][row], (firsts[row], seconds[row])
            assert types[row][mask[row] == 1].tolist() == expected["token_type_ids"][row]
        for row in (0, 37, len(firsts) - 1):  # one row: the operator without the Loop
            one, one_types, _, _ = session.run(None, graph.string_feeds([firsts[row]], [seconds[row]]))
            assert one[0].tolist() == expected["input_ids"][row]
            assert one_types[0].tolist() == expected["token_type_ids"][row]


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


def test_a_pair_task_exports_a_model_that_takes_string_pairs(tmp_path):
    """Pairs past max_length included: their logits equal the plain model's on the Python
    tokenizer's ids, in batches and one pair at a time."""
    from conftest import make_classifier, make_rows, write_jsonl

    from edgekd.data import Columns, load_file
    from edgekd.models import load_classifier, save_model
    from edgekd.sessions import onnx_session

    student = tmp_path / "student"
    tokenizer = _bert_tokenizer(tmp_path / "tok")
    save_model(make_classifier("bert", layers=1, vocab_size=len(tokenizer)), tokenizer, student)
    letters = str.maketrans("0123456789", "abcdefghij")  # the tokenizer's vocabulary has no digits
    rows = [{**row, "text": row["text"].translate(letters), "second": " ".join(["hello world"] * (1 + i * 5))}
            for i, row in enumerate(make_rows(12, seed=3))]
    model, _ = load_classifier(student)
    data = load_file(write_jsonl(rows, tmp_path / "pairs.jsonl"), columns=Columns(text_pair="second"),
                     label2id=model.config.label2id)
    (artifact,) = export(student, targets=[load_target("onnx-fp32")], out=tmp_path / "out", validation=data,
                         with_tokenizer=True)
    entry = json.loads((artifact.folder / "edgekd.json").read_text())["with_tokenizer"]
    assert set(entry["inputs"]) == {"text", "text_pair"}
    assert entry["token_parity"]["validation data"] == {"rows": 12, "exact": 12, "flagged": 0}
    session = onnx_session(artifact.folder / entry["model_file"], custom_ops=True)
    plain = onnx_session(artifact.model_file)
    max_length = entry["max_length"]
    firsts, seconds = [row["text"] for row in rows], [row["second"] for row in rows]
    assert max(len(ids) for ids in tokenizer(firsts, seconds)["input_ids"]) > max_length  # some are cut
    feeds = tokenizer(firsts, seconds, truncation=True, max_length=max_length, padding=True, return_tensors="np")
    reference = plain.run(["logits"], {k: v.astype(np.int64) for k, v in feeds.items()})[0]
    logits, exact = session.run(["logits", "exact"], graph.string_feeds(firsts, seconds))
    assert exact.all()
    np.testing.assert_allclose(logits, reference, atol=1e-5)
    one, _ = session.run(["logits", "exact"], graph.string_feeds(firsts[-1:], seconds[-1:]))
    np.testing.assert_allclose(one[0], reference[-1], atol=1e-5)

    # bench times it with tokenization included, on the same pairs, and predicts as the plain model
    from edgekd.benchmarking.classifier import bench

    fast = dict(max_length=32, sequence_length=32, repeats=3, warmup=1, throughput_batch_size=4,
                measure_memory=False, show_progress=False, measure_roofline=False)
    report = bench(teacher=student, student=None, artifacts=tmp_path / "out", data=data, **fast)
    by_name = {row["name"]: row for row in report["rows"]}
    inside = next(name for name in by_name if name.endswith("/onnx-fp32+tokenizer"))
    plain_row = by_name[inside.replace("+tokenizer", "")]
    for metric in ("accuracy", "agreement"):
        assert by_name[inside]["quality"][metric] == plain_row["quality"][metric]
    assert by_name[inside]["quality"]["kl_to_teacher"] < 1e-6
    assert by_name[inside]["latency"]["p50_ms"] > 0
    singles = load_file(write_jsonl([{"text": row["text"], "label": row["label"]} for row in rows],
                                    tmp_path / "single.jsonl"), columns=Columns(), label2id=model.config.label2id)
    with pytest.raises(UserError, match=r"takes text pairs and the evaluation data has single texts"):
        bench(teacher=student, student=None, artifacts=tmp_path / "out", data=singles, **fast)
