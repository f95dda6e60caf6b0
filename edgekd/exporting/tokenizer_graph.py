"""The student's tokenizer inside the ONNX graph (`edgekd export --with-tokenizer`).

An app that feeds token ids must tokenize exactly as the Python tokenizer does, and apps
get that wrong (lower-casing, accents, unknown pieces). With `--with-tokenizer` the
artifact folder also holds a model that takes a batch of raw strings (and string pairs
for pair tasks) and returns logits: ONNX Runtime Extensions' `BertTokenizer` operator (on
a batch of one row directly, on a larger batch once per row inside an ONNX `Loop`, padded
to the batch's longest row as at training; a pair cut to max_length here, as the
tokenizers library cuts it), merged in front of the exported model. The app registers the extensions' custom-op
library (`onnxruntime_extensions.get_library_path()`; the onnxruntime-extensions
packages for Android and iOS) and passes strings.

Only what the operator reproduces exactly is built: a WordPiece tokenizer with BERT's
normalizer, pre-tokenizer and `[CLS] A [SEP] (B [SEP])` template. Its settings are read
from the tokenizer's own `tokenizer.json` (the converter in onnxruntime-extensions reads
`strip_accents` from the Python arguments only, so a lower-casing tokenizer that strips
accents by default kept them: "Ünïcödé" became [UNK]). Anything else is refused by name,
and every export checks the ids token for token against the Python tokenizer on the
validation text and on `HOSTILE_TEXTS` before the model is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgekd.errors import UserError
from edgekd.sessions import PAIR_INPUT, TEXT_INPUT, string_feeds

CONTRIB_DOMAIN = "ai.onnx.contrib"
MODEL_FILE = "model.with_tokenizer.onnx"
ORT_MODEL_FILE = "model.with_tokenizer.ort"
REQUIRED_OPERATORS_FILE = "required_operators.with_tokenizer.config"
ID_OUTPUTS = ("input_ids", "token_type_ids", "attention_mask")
EXACT_OUTPUT = "exact"  # per row: the ids are the Python tokenizer's
PREFIX = "tokenizer/"  # names of the tokenizer graph's own values in the merged model

# Text an app will one day send. "\0" is not here: the onnxruntime APIs take strings as
# NUL-terminated C strings, so nothing after a NUL reaches any graph (see `NUL_NOTE`).
HOSTILE_TEXTS = (
    "Ünïcödé café naïve résumé", "ÀÉÎÕÜ ß Æ Ø å ç ñ", "Straße İstanbul ǅ ﬁ", "e\u0301 a\u0308 combining marks",
    "日本語のテキストです", "中文文本，标点。", "한국어 텍스트", "ไทย ภาษา", "عربي نص", "עברית",
    "emoji 😀👍🏽🇬🇧 ok", "👨‍👩‍👧‍👦 family", "tab\tnew\nline\rcarriage", "bell\x07 escape\x1b del\x7f",
    "zero\u200bwidth\u200djoiner\ufeffbom", "nbsp\u00a0thin\u2009ideographic\u3000space",
    "soft\u00adhyphen", "private \ue000 use", "replacement \ufffd char",
    "x" * 150, "supercalifragilisticexpialidocious" * 4, "a" * 101, "a" * 100,
    "", " ", "   \t\n  ", "\u3000", ".", "!!!???...", "$100.00 & 50% off #tag @user",
    "MiXeD CaSe WORDS", "don't won't it's", "http://example.com/path?q=1&r=2", "C++ / C# -- x86_64",
    "12345 67.89 1e10 0x1F", "[UNK] token", "unknownpiece_qzxv ##ing", " ".join(["word"] * 400),
)
EXACT_NOTE = ("`exact` is false for a row whose ids hold [UNK] (the operator keeps a word's pieces before "
              "an unknown one), or that holds a written-out special token or a character the census of "
              "every code point found the operator handles otherwise; tokenize such rows in the app, or "
              "treat their logits as approximate")
NUL_NOTE = ("onnxruntime's APIs pass strings as NUL-terminated C strings: a text is cut at its "
            "first NUL (\\0), which the Python tokenizer would drop; strip NUL before calling")


@dataclass(frozen=True)
class WordPieceSettings:
    """What the `BertTokenizer` operator needs, read from a tokenizer.json."""

    vocab: list[str]  # token by id
    lowercase: bool
    strip_accents: bool
    handle_chinese_chars: bool
    unk_token: str
    cls_token: str
    sep_token: str
    pad_token: str
    pad_id: int
    mask_token: str


def wordpiece_settings(tokenizer) -> WordPieceSettings:
    """The operator's settings for `tokenizer`; a tokenizer it cannot reproduce is refused."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise _refused(tokenizer, "it is not a fast (tokenizers) tokenizer")
    spec = json.loads(backend.to_str())
    model, normalizer = spec.get("model") or {}, spec.get("normalizer") or {}
    if model.get("type") != "WordPiece":
        raise _refused(tokenizer, f"its model is {model.get('type')}, and only WordPiece (BERT) has an "
                                  "exact operator")
    if normalizer.get("type") != "BertNormalizer" or not normalizer.get("clean_text", True):
        raise _refused(tokenizer, f"its normalizer is {normalizer.get('type') or 'none'}, not BERT's")
    if (spec.get("pre_tokenizer") or {}).get("type") != "BertPreTokenizer":
        raise _refused(tokenizer, "its pre-tokenizer is not BERT's")
    if model.get("continuing_subword_prefix", "##") != "##" or model.get("max_input_chars_per_word", 100) != 100:
        raise _refused(tokenizer, "its WordPiece model has a non-default prefix or word length")
    vocabulary = model["vocab"]
    by_id = sorted(vocabulary.items(), key=lambda item: item[1])
    if [index for _, index in by_id] != list(range(len(by_id))):
        raise _refused(tokenizer, "its vocabulary ids are not 0..n-1")
    extra = [token["content"] for token in spec.get("added_tokens") or ()
             if token["content"] not in vocabulary or token["id"] != vocabulary[token["content"]]]
    if extra:
        raise _refused(tokenizer, f"it has added tokens outside its vocabulary ({extra[0]!r})")
    cls, sep = tokenizer.cls_token, tokenizer.sep_token
    _check_template(tokenizer, spec.get("post_processor") or {}, cls, sep)
    if getattr(tokenizer, "truncation_side", "right") != "right" or getattr(tokenizer, "padding_side", "right") != "right":
        raise _refused(tokenizer, "it truncates or pads on the left")
    lowercase = bool(normalizer.get("lowercase", True))
    strip = normalizer.get("strip_accents")
    return WordPieceSettings(
        vocab=[token for token, _ in by_id], lowercase=lowercase,
        # None: follow lowercase, as BertNormalizer does
        strip_accents=lowercase if strip is None else bool(strip),
        handle_chinese_chars=bool(normalizer.get("handle_chinese_chars", True)),
        unk_token=model.get("unk_token", "[UNK]"), cls_token=cls, sep_token=sep,
        pad_token=tokenizer.pad_token, pad_id=int(tokenizer.pad_token_id),
        mask_token=tokenizer.mask_token or model.get("unk_token", "[UNK]"))


def _check_template(tokenizer, processor: dict, cls: str | None, sep: str | None) -> None:
    if cls is None or sep is None or tokenizer.pad_token is None:
        raise _refused(tokenizer, "it has no [CLS], [SEP] or [PAD] token")
    if processor.get("type") == "BertProcessing":
        return
    if processor.get("type") != "TemplateProcessing":
        raise _refused(tokenizer, f"its post-processor is {processor.get('type') or 'none'}")

    def shape(items):
        return [(("S", item["SpecialToken"]["id"]) if "SpecialToken" in item else ("Q", item["Sequence"]["id"]),
                 next(iter(item.values()))["type_id"]) for item in items]

    single = [(("S", cls), 0), (("Q", "A"), 0), (("S", sep), 0)]
    pair = single + [(("Q", "B"), 1), (("S", sep), 1)]
    if shape(processor.get("single", ())) != single or shape(processor.get("pair", ())) != pair:
        raise _refused(tokenizer, "its template is not [CLS] A [SEP] (B [SEP])")


def _refused(tokenizer, reason: str) -> UserError:
    return UserError(f"--with-tokenizer: the student's tokenizer ({type(tokenizer).__name__}) cannot be "
                     f"reproduced exactly by ONNX Runtime Extensions' operators: {reason}; export "
                     "without --with-tokenizer and tokenize in the app")


# ------------------------------------------------------------------------------ the graph

# Private-use code points: fixed by Unicode for good, deleted by BERT's clean_text, kept by the operator.
PRIVATE_USE = ((0xE000, 0xF8FF), (0xF0000, 0xFFFFD), (0x100000, 0x10FFFD))


def removal_candidates() -> list[str]:
    """What BERT's normalizer may delete (clean_text: control and format characters but
    tab, newline and carriage return, and U+FFFD), by this Python's Unicode tables; the
    census (`removal_class`) keeps those the tokenizer itself deletes and the operator
    does not."""
    import unicodedata

    return [chr(code) for code in range(0x110000) if not 0xD800 <= code < 0xE000
            and unicodedata.category(chr(code)) in ("Cc", "Cf") and chr(code) not in "\t\n\r"] + ["\ufffd"]


def tokenizer_model(settings: WordPieceSettings, *, max_length: int, pair: bool, opset: int,
                    ir_version: int, removed: str = "", removed_leads: bytes = b"", unsafe: str = "",
                    special_sequences: tuple[tuple[int, ...], ...] = ()) -> onnx.ModelProto:
    """Strings (batch,) [and pairs (batch,)] -> input_ids, token_type_ids, attention_mask
    (batch, longest row), rows padded on the right with the pad id, and `exact` (batch,).

    `removed` (an RE2 class) is deleted from the text first: what the Python tokenizer
    deletes and the operator keeps; `removed_leads` are the first UTF-8 bytes of its
    characters (a batch without any of them skips the regex). `exact` is false for a row
    whose ids hold [UNK] (the operator keeps the pieces of a word before an unknown one, the
    Python tokenizer makes the whole word [UNK]), that holds a match of `unsafe` (see `unsafe_characters`), or
    whose ids hold one of `special_sequences` (the operator's pieces of a special token
    written out in the text). ONNX Runtime Extensions compiles each regex on every call
    (0.1 to 0.2 ms each on the demo), so a regex is in the graph only when the census
    needs one."""
    texts = [TEXT_INPUT, PAIR_INPUT] if pair else [TEXT_INPUT]
    string = lambda name, value: helper.make_node(
        "Constant", [], [name], value=helper.make_tensor(name, TensorProto.STRING, [1], [value.encode()]))
    cleaning, flags = _removal(texts, removed, removed_leads), []
    for text in texts:
        if unsafe:
            cleaning += [helper.make_node("StringRegexReplace", [f"{text}_clean", "unsafe_pattern", "nothing"],
                                          [f"{text}_safe"], domain=CONTRIB_DOMAIN),
                         helper.make_node("StringEqual", [f"{text}_clean", f"{text}_safe"], [f"{text}_exact"],
                                          domain=CONTRIB_DOMAIN)]
            flags.append(f"{text}_exact")
    if unsafe:
        cleaning += [string("unsafe_pattern", unsafe), string("nothing", "")]
    nodes = cleaning + [
        helper.make_node("Shape", [TEXT_INPUT], ["rows_1d"]),
        helper.make_node("Constant", [], ["one_1"], value=helper.make_tensor("one_1", TensorProto.INT64, [1], [1])),
        helper.make_node("Equal", ["rows_1d", "one_1"], ["single_1d"]),
        helper.make_node("Squeeze", ["single_1d"], ["single"]),
        # one row (what an app sends) goes to the operator as it is; a Loop over the rows costs
        # a tenth of a millisecond more, a third of the tokenizing itself
        helper.make_node("If", ["single"], list(ID_OUTPUTS),
                         then_branch=_single_graph(settings, max_length=max_length, pair=pair),
                         else_branch=_batch_graph(settings, max_length=max_length, pair=pair)),
        helper.make_node("Constant", [], ["axis_1"], value=helper.make_tensor("axis_1", TensorProto.INT64, [1], [1])),
    ]
    unk = settings.vocab.index(settings.unk_token)
    nodes += [helper.make_node("Constant", [], ["unk_id"], value=helper.make_tensor("unk_id", TensorProto.INT64, [], [unk])),
              helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("zero", TensorProto.INT64, [], [0])),
              helper.make_node("Equal", ["input_ids", "unk_id"], ["is_unk"])]
    suspects = [_any_in_row("is_unk", nodes)]
    for k in sorted({len(sequence) for sequence in special_sequences}):
        suspects.append(_sequences_in_row(f"special_{k}", [q for q in special_sequences if len(q) == k],
                                          len(settings.vocab), nodes))
    _chain("Or", suspects, "suspect", nodes)
    nodes.append(helper.make_node("Not", ["suspect"], ["clean_ids"]))
    _chain("And", flags + ["clean_ids"], EXACT_OUTPUT, nodes)
    inputs = [helper.make_tensor_value_info(TEXT_INPUT, TensorProto.STRING, ["batch"])]
    if pair:
        inputs.append(helper.make_tensor_value_info(PAIR_INPUT, TensorProto.STRING, ["batch"]))
    outputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"]) for name in ID_OUTPUTS]
    outputs.append(helper.make_tensor_value_info(EXACT_OUTPUT, TensorProto.BOOL, ["batch"]))
    graph = helper.make_graph(_ordered(nodes), "edgekd_tokenizer", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid(CONTRIB_DOMAIN, 1)])
    model.ir_version = ir_version
    _prefix_names(model.graph, keep={TEXT_INPUT, PAIR_INPUT, *ID_OUTPUTS, EXACT_OUTPUT})
    return model


def _removal(texts: list[str], removed: str, leads: bytes) -> list:
    """Nodes making `<text>_clean` of each text: `removed` deleted by regex when a byte of
    the batch is one of `leads`, the first UTF-8 bytes of its characters, else the text as
    it is. The regex is compiled on every call it runs (a tenth of a millisecond on the
    demo); the byte test, onnxruntime-extensions' StringSplit at those bytes, is a scan."""
    if not removed:
        return [helper.make_node("Identity", [text], [f"{text}_clean"]) for text in texts]
    starts = bytes(sorted(set(leads) - {0}))  # no NUL reaches a graph (see NUL_NOTE)
    nodes = [
        helper.make_node("Constant", [], ["removal_starts"],
                         value=helper.make_tensor("removal_starts", TensorProto.STRING, [1], [starts])),
        helper.make_node("Constant", [], ["skip_empty"],  # false: a text split at its first byte has 2 pieces
                         value=helper.make_tensor("skip_empty", TensorProto.BOOL, [1], [False])),
        helper.make_node("Constant", [], ["piece_axis"],
                         value=helper.make_tensor("piece_axis", TensorProto.INT64, [], [1])),
        helper.make_node("Constant", [], ["one_piece"],
                         value=helper.make_tensor("one_piece", TensorProto.INT64, [], [1])),
    ]
    batch = texts[0]
    if len(texts) > 1:
        nodes.append(helper.make_node("Concat", texts, ["all_texts"], axis=0))
        batch = "all_texts"
    nodes += [helper.make_node("StringSplit", [batch, "removal_starts", "skip_empty"],
                               ["split_indices", "split_pieces", "split_shape"], domain=CONTRIB_DOMAIN),
              helper.make_node("Gather", ["split_shape", "piece_axis"], ["most_pieces"], axis=0),
              helper.make_node("Greater", ["most_pieces", "one_piece"], ["may_hold_removed"])]
    deleting = [helper.make_node("Constant", [], ["removed_pattern"],
                                 value=helper.make_tensor("removed_pattern", TensorProto.STRING, [1],
                                                          [removed.encode()])),
                helper.make_node("Constant", [], ["nothing_removed"],
                                 value=helper.make_tensor("nothing_removed", TensorProto.STRING, [1], [b""]))]
    deleting += [helper.make_node("StringRegexReplace", [text, "removed_pattern", "nothing_removed"],
                                  [f"deleting_{text}"], domain=CONTRIB_DOMAIN) for text in texts]
    keeping = [helper.make_node("Identity", [text], [f"keeping_{text}"]) for text in texts]
    branch = lambda name, branch_nodes: helper.make_graph(
        _ordered(branch_nodes), f"edgekd_{name}", [],
        [helper.make_tensor_value_info(f"{name}_{text}", TensorProto.STRING, ["batch"]) for text in texts])
    nodes.append(helper.make_node("If", ["may_hold_removed"], [f"{text}_clean" for text in texts],
                                  then_branch=branch("deleting", deleting), else_branch=branch("keeping", keeping)))
    return nodes


def _chain(op: str, names: list[str], output: str, nodes: list) -> None:
    """`output` = names[0] op names[1] op ...: ONNX's And and Or take two inputs."""
    if len(names) == 1:
        nodes.append(helper.make_node("Identity", names, [output]))
        return
    current = names[0]
    for number, name in enumerate(names[1:]):
        result = output if number == len(names) - 2 else f"{output}_{number}"
        nodes.append(helper.make_node(op, [current, name], [result]))
        current = result


def _any_in_row(matches: str, nodes: list) -> str:
    """(batch, n) booleans -> (batch,): any true in the row (false for n = 0)."""
    nodes += [helper.make_node("Cast", [matches], [f"{matches}_int"], to=TensorProto.INT64),
              helper.make_node("ReduceSum", [f"{matches}_int", "axis_1"], [f"{matches}_count"], keepdims=0),
              helper.make_node("Greater", [f"{matches}_count", "zero"], [f"{matches}_any"])]
    return f"{matches}_any"


def _sequences_in_row(name: str, sequences: list[tuple[int, ...]], vocabulary: int, nodes: list) -> str:
    """(batch,) booleans: a row's input_ids hold one of `sequences` (k ids each, the same k;
    vocabulary ** k < 2 ** 63). Each window of k ids becomes one number, id by id in base
    `vocabulary`, compared with the sequences' numbers at once: a dozen operators for any
    number of sequences, where one comparison per id and sequence costs a tenth of a ms."""
    k = len(sequences[0])
    key = lambda ids: sum(token * vocabulary ** (k - 1 - j) for j, token in enumerate(ids))
    constant = lambda value, dims, numbers: helper.make_node(
        "Constant", [], [f"{name}_{value}"],
        value=helper.make_tensor(f"{name}_{value}", TensorProto.INT64, dims, numbers))
    nodes += [constant("keys", [len(sequences)], [key(sequence) for sequence in sequences]),
              constant("axes", [2], [1, 2]), constant("axis_2", [1], [2])]
    window = None
    for j in range(k):
        end = j - (k - 1) if j < k - 1 else np.iinfo(np.int64).max  # ids[:, j : length - (k - 1 - j)]
        nodes += [constant(f"start_{j}", [1], [j]), constant(f"end_{j}", [1], [end]),
                  constant(f"scale_{j}", [], [vocabulary ** (k - 1 - j)]),
                  helper.make_node("Slice", ["input_ids", f"{name}_start_{j}", f"{name}_end_{j}", "axis_1"],
                                   [f"{name}_ids_{j}"]),
                  helper.make_node("Mul", [f"{name}_ids_{j}", f"{name}_scale_{j}"], [f"{name}_part_{j}"])]
        if window is None:
            window = f"{name}_part_{j}"
        else:
            nodes.append(helper.make_node("Add", [window, f"{name}_part_{j}"], [f"{name}_window_{j}"]))
            window = f"{name}_window_{j}"
    nodes += [helper.make_node("Unsqueeze", [window, f"{name}_axis_2"], [f"{name}_window"]),
              helper.make_node("Equal", [f"{name}_window", f"{name}_keys"], [f"{name}_match"]),
              helper.make_node("Cast", [f"{name}_match"], [f"{name}_match_int"], to=TensorProto.INT64),
              helper.make_node("ReduceSum", [f"{name}_match_int", f"{name}_axes"], [f"{name}_count"], keepdims=0),
              helper.make_node("Greater", [f"{name}_count", "zero"], [f"{name}_any"])]
    return f"{name}_any"


def _prefix_names(graph: onnx.GraphProto, *, keep: set[str]) -> None:
    """Every value the tokenizer graph makes gets the `tokenizer/` prefix (its Loop body's
    too): merged in front of a model, no name can clash with one of the model's."""
    def rename(name: str) -> str:
        return name if not name or name in keep else PREFIX + name

    def walk(g: onnx.GraphProto) -> None:
        for value in (*g.input, *g.output):
            value.name = rename(value.name)
        for node in g.node:
            node.name = rename(node.name or node.output[0])
            node.input[:] = [rename(name) for name in node.input]
            node.output[:] = [rename(name) for name in node.output]
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    walk(attribute.g)

    walk(graph)


def _ordered(nodes: list) -> list:
    """Constants first: ONNX graphs list a value's producer before its users."""
    return [n for n in nodes if n.op_type == "Constant"] + [n for n in nodes if n.op_type != "Constant"]


def _bert_tokenizer(settings: WordPieceSettings, texts: str, *, max_length: int, outputs: list[str]):
    """The operator on one text (or one pair: a tensor of two strings)."""
    return helper.make_node(
        # no offset-mapping output: the operator computes offsets only when asked, and they
        # cost as much as the tokenizing itself (0.40 against 0.24 ms for 128 tokens)
        "BertTokenizer", [texts], outputs, domain=CONTRIB_DOMAIN,
        vocab_file="\n".join(settings.vocab), do_lower_case=int(settings.lowercase),
        strip_accents=int(settings.strip_accents), tokenize_chinese_chars=int(settings.handle_chinese_chars),
        unk_token=settings.unk_token, cls_token=settings.cls_token, sep_token=settings.sep_token,
        pad_token=settings.pad_token, mask_token=settings.mask_token, max_length=max_length,
        truncation_strategy_name="longest_first")


def _id_outputs(branch: str, nodes: list) -> onnx.GraphProto:
    """A branch of the If: its values are named `<branch>_...` (ONNX names are unique
    across a graph and its subgraphs)."""
    return helper.make_graph(_ordered(nodes), f"edgekd_tokenizer_{branch}", [], [
        helper.make_tensor_value_info(f"{branch}_{name}", TensorProto.INT64, ["batch", "sequence"])
        for name in ID_OUTPUTS])


def _single_graph(settings: WordPieceSettings, *, max_length: int, pair: bool) -> onnx.GraphProto:
    """A batch of one row: the operator on the row as it is, as a (1, length) batch."""
    nodes = [helper.make_node("Constant", [], ["single_axis_0"],
                              value=helper.make_tensor("single_axis_0", TensorProto.INT64, [1], [0]))]
    row = f"{TEXT_INPUT}_clean"
    if pair:
        nodes.append(helper.make_node("Concat", [f"{TEXT_INPUT}_clean", f"{PAIR_INPUT}_clean"], ["single_texts"], axis=0))
        row = "single_texts"
    ids = _tokenized(settings, row, "single", nodes, max_length=max_length, pair=pair)
    nodes += [helper.make_node("Unsqueeze", [name, "single_axis_0"], [f"single_{value}"])
              for name, value in zip(ids, ID_OUTPUTS)]
    return _id_outputs("single", nodes)


def _tokenized(settings: WordPieceSettings, texts: str, prefix: str, nodes: list, *, max_length: int,
               pair: bool) -> list[str]:
    """Appends to `nodes` the operator on one row (`texts`: one string, or a pair as two)
    and returns the names of its ids, type ids and mask. The operator truncates a single
    text as the Python tokenizer does, but does not cut a pair at all: a pair is cut here
    by the tokenizers library's `longest_first` rule."""
    raw = [f"{prefix}_{name}" for name in ("ids", "types", "mask")]
    nodes.append(_bert_tokenizer(settings, texts, max_length=max_length, outputs=raw))
    return _pair_cut(raw, prefix, nodes, max_length=max_length) if pair else raw


def _pair_cut(raw: list[str], prefix: str, nodes: list, *, max_length: int) -> list[str]:
    """[CLS] A [SEP] B [SEP] of lengths la, lb cut to max_length: with m = max_length - 3
    and h = m // 2, nothing is cut when la + lb <= m; when both are longer than h the
    longer keeps m - h and the other h (B is the longer on a tie); else the longer keeps
    what the shorter leaves."""
    ids, types, _ = raw
    name = lambda value: f"{prefix}_cut_{value}"
    constant = lambda value, number: helper.make_node(
        "Constant", [], [name(value)], value=helper.make_tensor(name(value), TensorProto.INT64, [], [number]))
    m = max_length - 3
    op = lambda kind, inputs, output: helper.make_node(kind, [name(i) for i in inputs], [name(output)])
    nodes += [
        constant("m", m), constant("h", m // 2), constant("m_minus_h", m - m // 2), constant("one", 1),
        constant("two", 2), constant("zero", 0),
        helper.make_node("Cast", [types], [name("types_bool")], to=TensorProto.BOOL),
        helper.make_node("Cast", [name("types_bool")], [name("is_b")], to=TensorProto.INT64),
        helper.make_node("Shape", [ids], [name("length_1d")]),
        helper.make_node("Squeeze", [name("length_1d")], [name("length")]),
        helper.make_node("ReduceSum", [name("is_b")], [name("b_and_sep")], keepdims=0),
        op("Sub", ["b_and_sep", "one"], "lb"),
        op("Sub", ["length", "b_and_sep"], "a_and_two"),
        op("Sub", ["a_and_two", "two"], "la"),
        op("Add", ["la", "lb"], "total"),
        op("Greater", ["total", "m"], "over"),
        op("Greater", ["la", "h"], "a_long"), op("Greater", ["lb", "h"], "b_long"),
        op("And", ["a_long", "b_long"], "both_long"),
        op("Greater", ["la", "lb"], "a_longer"),
        op("Where", ["a_longer", "m_minus_h", "h"], "both_ka"),
        op("Sub", ["m", "lb"], "m_minus_lb"),
        op("Where", ["a_longer", "m_minus_lb", "la"], "one_ka"),
        op("Where", ["both_long", "both_ka", "one_ka"], "cut_ka"),
        op("Sub", ["m", "cut_ka"], "cut_kb"),
        op("Where", ["over", "cut_ka", "la"], "ka"),
        op("Where", ["over", "cut_kb", "lb"], "kb"),
        # kept positions: [CLS] and A's first ka, A's [SEP], B's first kb, B's [SEP]
        op("Add", ["ka", "one"], "a_end"),
        op("Range", ["zero", "a_end", "one"], "a_positions"),
        op("Add", ["la", "one"], "a_sep"),
        op("Add", ["la", "two"], "b_start"),
        op("Add", ["b_start", "kb"], "b_end"),
        op("Range", ["b_start", "b_end", "one"], "b_positions"),
        op("Add", ["b_start", "lb"], "b_sep"),
        helper.make_node("Unsqueeze", [name("a_sep"), name("axis_0")], [name("a_sep_1d")]),
        helper.make_node("Unsqueeze", [name("b_sep"), name("axis_0")], [name("b_sep_1d")]),
        helper.make_node("Constant", [], [name("axis_0")], value=helper.make_tensor(name("axis_0"), TensorProto.INT64, [1], [0])),
        helper.make_node("Concat", [name("a_positions"), name("a_sep_1d"), name("b_positions"), name("b_sep_1d")],
                         [name("positions")], axis=0),
    ]
    cut = [name(value) for value in ("ids", "types", "mask")]
    nodes += [helper.make_node("Gather", [value, name("positions")], [kept], axis=0) for value, kept in zip(raw, cut)]
    return cut


def _batch_graph(settings: WordPieceSettings, *, max_length: int, pair: bool) -> onnx.GraphProto:
    """Several rows: the operator once per row inside a Loop, each row padded to
    max_length, then the batch cut to its longest row."""
    nodes = [
        helper.make_node("Squeeze", ["rows_1d"], ["rows"]),
        helper.make_node("Constant", [], ["always"], value=helper.make_tensor("always", TensorProto.BOOL, [], [True])),
        helper.make_node("Loop", ["rows", "always"], [f"{name}_full" for name in ID_OUTPUTS],
                         body=_row_graph(settings, max_length=max_length, pair=pair)),
        helper.make_node("Constant", [], ["zero_1"], value=helper.make_tensor("zero_1", TensorProto.INT64, [1], [0])),
        helper.make_node("ReduceSum", ["attention_mask_full", "axis_1"], ["row_lengths"], keepdims=0),
        helper.make_node("ReduceMax", ["row_lengths"], ["longest"], keepdims=1),
    ]
    nodes += [helper.make_node("Slice", [f"{name}_full", "zero_1", "longest", "axis_1"], [f"batch_{name}"])
              for name in ID_OUTPUTS]
    return _id_outputs("batch", nodes)


def _row_graph(settings: WordPieceSettings, *, max_length: int, pair: bool) -> onnx.GraphProto:
    """One row: its string(s) through BertTokenizer, each output padded to max_length."""
    texts = [TEXT_INPUT, PAIR_INPUT] if pair else [TEXT_INPUT]
    nodes = [helper.make_node("Unsqueeze", ["i", "axis_0"], ["index"])]
    for text in texts:
        nodes.append(helper.make_node("Gather", [f"{text}_clean", "index"], [f"{text}_row"], axis=0))
    row = f"{TEXT_INPUT}_row"
    if pair:
        nodes.append(helper.make_node("Concat", [f"{TEXT_INPUT}_row", f"{PAIR_INPUT}_row"], ["row_texts"], axis=0))
        row = "row_texts"
    tokenized = _tokenized(settings, row, "row", nodes, max_length=max_length, pair=pair)
    for name, value, pad in zip(tokenized, ID_OUTPUTS, (settings.pad_id, 0, 0)):
        nodes += [
            helper.make_node("Shape", [name], [f"{name}_length"]),
            helper.make_node("Sub", ["max_length", f"{name}_length"], [f"{name}_missing"]),
            helper.make_node("Concat", ["zero_1", f"{name}_missing"], [f"{name}_pads"], axis=0),  # outer zero_1
            helper.make_node("Constant", [], [f"{name}_pad_value"],
                             value=helper.make_tensor(f"{name}_pad_value", TensorProto.INT64, [], [pad])),
            helper.make_node("Pad", [name, f"{name}_pads", f"{name}_pad_value"], [f"{value}_row"]),
        ]
    nodes += [
        helper.make_node("Constant", [], ["axis_0"], value=helper.make_tensor("axis_0", TensorProto.INT64, [1], [0])),
        helper.make_node("Constant", [], ["max_length"],
                         value=helper.make_tensor("max_length", TensorProto.INT64, [1], [max_length])),
        helper.make_node("Identity", ["condition"], ["condition_out"]),
    ]
    return helper.make_graph(
        _ordered(nodes), "edgekd_tokenizer_row",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("condition", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("condition_out", TensorProto.BOOL, [])]
        + [helper.make_tensor_value_info(f"{name}_row", TensorProto.INT64, [max_length]) for name in ID_OUTPUTS])


def merged_model(tokenizer_graph: onnx.ModelProto, model: onnx.ModelProto, *,
                 model_inputs: list[str]) -> onnx.ModelProto:
    """The tokenizer graph feeding `model`'s token inputs: strings in, logits out."""
    from onnx import compose

    kept = [name for name in ID_OUTPUTS if name in model_inputs]
    if sorted(kept) != sorted(model_inputs):
        raise UserError(f"--with-tokenizer: the exported graph takes {model_inputs}, and the tokenizer "
                        f"gives {list(ID_OUTPUTS)}; export without --with-tokenizer")
    pre = onnx.ModelProto()
    pre.CopyFrom(tokenizer_graph)
    del pre.graph.output[:]
    pre.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
                            for name in kept)
    pre.graph.output.append(helper.make_tensor_value_info(EXACT_OUTPUT, TensorProto.BOOL, ["batch"]))
    pre.ir_version = model.ir_version
    domains = {entry.domain: entry.version for entry in model.opset_import}
    for entry in pre.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = domains.get("", domains.get("ai.onnx", entry.version))
    merged = compose.merge_models(pre, model, io_map=[(name, name) for name in kept])
    merged.graph.output.append(helper.make_tensor_value_info(EXACT_OUTPUT, TensorProto.BOOL, ["batch"]))
    return merged


# ------------------------------------------------------------------------------ census

def unsafe_characters(session, tokenizer, *, pair: bool) -> list[str]:
    """The characters whose ids the operator graph (`session`, built without an unsafe
    class) gives otherwise than `tokenizer` without an [UNK] to show it: every assigned code
    point, alone and inside a word. (Most differences are characters the vocabulary lacks,
    which the graph's [UNK] test flags; what is left are characters it lowercases, splits or
    normalises otherwise, into pieces the vocabulary has.)"""
    import unicodedata

    characters = [chr(code) for code in range(1, 0x110000) if not 0xD800 <= code < 0xE000
                  and unicodedata.category(chr(code)) not in ("Cn", "Co", "Cs")]
    unk = tokenizer.unk_token_id
    unsafe = set()
    for template in ("{}", "x{}x"):
        texts = [template.format(c) for c in characters]
        graph_ids = _graph_ids(session, texts, pair=pair)
        python_ids = _python_ids(tokenizer, texts, pair=pair)
        unsafe.update(c for c, ours, theirs in zip(characters, graph_ids, python_ids)
                      if ours != theirs and unk not in ours)
    return sorted(unsafe)


def _python_ids(tokenizer, texts: list[str], *, pair: bool) -> list[list[int]]:
    """As the graph is fed in a census: a pair graph gets an empty second text."""
    return tokenizer(texts, [""] * len(texts) if pair else None, truncation=True, max_length=16)["input_ids"]


def _deleted(characters: list[str], ids_of) -> set[str]:
    """The characters `ids_of` (texts -> ids) deletes: alone they give the ids of an empty
    text, inside a word those of the word without them."""
    alone, inside = ids_of(list(characters)), ids_of([f"x{c}x" for c in characters])
    (empty, word) = ids_of(["", "xx"])
    return {c for c, one, two in zip(characters, alone, inside) if one == empty and two == word}


def removal_class(session, tokenizer, *, pair: bool) -> tuple[str, bytes]:
    """The RE2 class the graph deletes before the operator (`session`, built without one),
    and the first UTF-8 bytes of its characters: what the tokenizer deletes and the operator keeps, from
    `removal_candidates` tested one by one, and the private-use ranges when samples of
    each say so."""
    python = lambda texts: _python_ids(tokenizer, texts, pair=pair)
    graph = lambda texts: _graph_ids(session, texts, pair=pair)
    candidates = removal_candidates()
    removed = _deleted(candidates, python) - _deleted(candidates, graph)
    private = []
    for first, last in PRIVATE_USE:
        samples = [chr(first), chr((first + last) // 2), chr(last)]
        if _deleted(samples, python) - _deleted(samples, graph) == set(samples):
            private.append((first, last))
    leads = {c.encode()[0] for c in removed}
    leads.update(chr(code).encode()[0] for first, last in private for code in range(first, last + 1))
    return character_class(sorted(removed), ranges=private), bytes(sorted(leads))


def special_token_checks(session, tokenizer, *, pair: bool) -> tuple[tuple[tuple[int, ...], ...], list[str]]:
    """How the graph finds a special token written out in a text (the Python tokenizer
    reads "[SEP]" there as the special token; the operator splits it into pieces): as the
    operator's ids for it, when the token begins and ends with ASCII punctuation (the
    operator, like BERT's pre-tokenizer, splits there, so its pieces are the same wherever it
    stands; checked in three contexts) -- else by regex, at a regex's cost on every call."""
    import string

    sequences, written = [], []
    trailing = 2 if pair else 1  # [SEP], and a pair's second [SEP]
    for token in sorted({token for token in tokenizer.all_special_tokens if token}):
        alone, *contexts = _graph_ids(session, [token, f"x{token}x", f"{token}{token}", f"a {token} b"], pair=pair)
        sequence = tuple(alone[1:-trailing])
        bounded = token[0] in string.punctuation and token[-1] in string.punctuation
        fits = 0 < len(sequence) and len(tokenizer) ** len(sequence) < 2 ** 63  # see _sequences_in_row
        if bounded and fits and all(_contains(ids, sequence) for ids in contexts):
            sequences.append(sequence)
        else:
            written.append(token)
    return tuple(sequences), written


def _contains(ids: list[int], sequence: tuple[int, ...]) -> bool:
    k = len(sequence)
    return any(tuple(ids[i:i + k]) == sequence for i in range(len(ids) - k + 1))


def _graph_ids(session, texts: list[str], *, pair: bool, batch: int = 4096) -> list[list[int]]:
    rows = []
    for start in range(0, len(texts), batch):
        chunk = texts[start:start + batch]
        ids, _, mask, *_ = session.run(None, string_feeds(chunk, [""] * len(chunk) if pair else None))
        rows.extend(row[m == 1].tolist() for row, m in zip(ids, mask))
    return rows


def unsafe_pattern(characters: list[str], special_tokens: list[str]) -> str:
    """The regex of what the operator does not reproduce: the census' characters, and
    special tokens written out in the text (the Python tokenizer reads "[SEP]" in a text as
    the special token; the operator splits it into pieces)."""
    import re

    parts = [character_class(characters)] if characters else []
    parts += [re.escape(token) for token in sorted(set(special_tokens), key=len, reverse=True) if token]
    return "|".join(part for part in parts if part)


def character_class(characters: list[str], *, ranges: list[tuple[int, int]] = ()) -> str:
    """An RE2 class matching exactly `characters` and the code-point `ranges`, as ranges."""
    ranges = list(ranges)
    codes = sorted(ord(c) for c in characters)
    if codes:
        first = last = codes[0]
        for code in codes[1:]:
            if code == last + 1:
                last = code
                continue
            ranges.append((first, last))
            first = last = code
        ranges.append((first, last))
    if not ranges:
        return ""
    return "[" + "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges) + "]"


# ------------------------------------------------------------------------------ in an export

def write_string_model(model: onnx.ModelProto, staging: Path, *, files: tuple[str, str, str], mobile: bool,
                       scratch: Path, optimization_level: str) -> tuple[Path, object, dict]:
    """A model with the extensions' operators in `staging`: as `files[0]` (.onnx), or for an
    ORT Mobile target as `files[1]` (.ort) with its required-operators file `files[2]`;
    with an open session of the written file and the manifest's file details."""
    from edgekd.sessions import onnx_session

    onnx_name, ort_name, config_name = files
    if not mobile:
        path = staging / onnx_name
        onnx.save(model, str(path))
        return path, onnx_session(path, optimization_level=optimization_level, custom_ops=True), {}
    from edgekd.exporting.mobile import convert_to_ort

    scratch.mkdir(parents=True, exist_ok=True)
    source = scratch / onnx_name
    onnx.save(model, str(source))
    path, config = convert_to_ort(source, staging, optimization_level=optimization_level, name=ort_name,
                                  config_name=config_name, custom_ops=True)
    return path, onnx_session(path, ort_format=True, custom_ops=True), {"required_operators_file": config.name}


def custom_ops_record() -> dict:
    """What the app must register, for the manifest."""
    from importlib import metadata

    return {"custom_ops": {
        "library": "onnxruntime-extensions", "version": metadata.version("onnxruntime-extensions"),
        "domain": CONTRIB_DOMAIN,
        "python": "SessionOptions.register_custom_ops_library(onnxruntime_extensions.get_library_path())",
        "android": "com.microsoft.onnxruntime:onnxruntime-extensions-android; "
                   "SessionOptions.registerCustomOpLibrary(OrtxPackage.getLibraryPath())",
        "ios": "onnxruntime-extensions-c (CocoaPods); SessionOptions.registerCustomOps(functionPointer: "
               "OrtExtensions.getRegisterCustomOpsFunctionPointer())"}}


@dataclass(frozen=True)
class TextFront:
    """The tokenizer graph of one export, with its census, built once for every target."""

    model: onnx.ModelProto
    unsafe_characters: int  # code points whose rows are flagged (exact = false)
    pair: bool
    max_length: int


def build_front(tokenizer, *, max_length: int, pair: bool, opset: int, ir_version: int) -> TextFront:
    """The checked tokenizer graph for `tokenizer`: settings from its tokenizer.json, then a
    census of every character through the operator against the tokenizer itself."""
    settings = wordpiece_settings(tokenizer)

    def build(**census) -> onnx.ModelProto:
        return tokenizer_model(settings, max_length=max_length, pair=pair, opset=opset, ir_version=ir_version,
                               **census)

    bare = _session(build())
    removed, leads = removal_class(bare, tokenizer, pair=pair)
    cleaned = _session(build(removed=removed, removed_leads=leads)) if removed else bare
    characters = unsafe_characters(cleaned, tokenizer, pair=pair)
    sequences, written = special_token_checks(cleaned, tokenizer, pair=pair)
    return TextFront(model=build(removed=removed, removed_leads=leads,
                                 unsafe=unsafe_pattern(characters, written),
                                 special_sequences=sequences),
                     unsafe_characters=len(characters), pair=pair, max_length=max_length)


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    from edgekd.sessions import register_extensions

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    register_extensions(options)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def check_front(front: TextFront, tokenizer, *, merged, plain, texts: list[str], pairs: list[str] | None,
                source: str, batch_size: int = 32) -> dict:
    """Token ids of the tokenizer graph against `tokenizer`, and logits of `merged`
    (strings in) against `plain` (ids in), on `texts` and on `HOSTILE_TEXTS`. A row the
    graph marks exact must give the tokenizer's ids, else the export is refused."""
    hostile = list(HOSTILE_TEXTS)
    hostile_pairs = [hostile[(i * 7 + 3) % len(hostile)] for i in range(len(hostile))] if front.pair else None
    session = _session(front.model)
    record = {}
    worst, changed, compared = 0.0, 0, 0
    for name, rows, row_pairs in ((source, texts, pairs), ("hostile set", hostile, hostile_pairs)):
        exact_rows = 0
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            chunk_pairs = None if row_pairs is None else row_pairs[start:start + batch_size]
            ids, types, mask, exact = session.run(None, string_feeds(chunk, chunk_pairs))
            expected = tokenizer(chunk, chunk_pairs, truncation=True, max_length=front.max_length,
                                 padding=True, return_tensors="np")
            for row in np.flatnonzero(exact):
                for produced, key in ((ids, "input_ids"), (types, "token_type_ids"), (mask, "attention_mask")):
                    if key not in expected:
                        continue
                    ours, theirs = produced[row][mask[row] == 1], expected[key][row][expected["attention_mask"][row] == 1]
                    if ours.tolist() != theirs.tolist():
                        raise UserError(
                            f"--with-tokenizer: the operator's {key} differ from the Python tokenizer's on "
                            f"{chunk[row][:60]!r} ({name}); the tokenizer cannot be reproduced exactly, "
                            "export without --with-tokenizer")
            exact_rows += int(exact.sum())
            logits, merged_exact = merged.run(["logits", EXACT_OUTPUT], string_feeds(chunk, chunk_pairs))
            feeds = {key: value.astype(np.int64) for key, value in expected.items()}
            (reference,) = plain.run(["logits"], feeds)
            keep = merged_exact.astype(bool)
            if keep.any():
                worst = max(worst, float(np.abs(logits[keep] - reference[keep]).max()))
                changed += int((logits[keep].argmax(-1) != reference[keep].argmax(-1)).sum())
                compared += int(keep.sum())
        record[name] = {"rows": len(rows), "exact": exact_rows, "flagged": len(rows) - exact_rows}
    return {"token_parity": record,
            "logit_parity": {"rows": compared, "max_abs_diff": worst, "predictions_changed": changed}}
