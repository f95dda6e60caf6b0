"""The student's tokenizer inside the ONNX graph (`edgekd export --with-tokenizer`).

An app that feeds token ids must tokenize exactly as the Python tokenizer does, and apps
get that wrong (lower-casing, accents, unknown pieces). With `--with-tokenizer` the
artifact folder also holds a model that takes a batch of raw strings (and string pairs
for pair tasks) and returns logits: ONNX Runtime Extensions' `BertTokenizer` operator, run
once per row inside an ONNX `Loop`, padded to the batch's longest row as at training,
merged in front of the exported model. The app registers the extensions' custom-op
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

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgekd.errors import UserError

CONTRIB_DOMAIN = "ai.onnx.contrib"
MODEL_FILE = "model.with_tokenizer.onnx"
ORT_MODEL_FILE = "model.with_tokenizer.ort"
REQUIRED_OPERATORS_FILE = "required_operators.with_tokenizer.config"
TEXT_INPUT, PAIR_INPUT = "text", "text_pair"
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
MEMORY_PATTERN_NOTE = ("open the session with the memory pattern off (enable_mem_pattern = false): with it "
                       "on, onnxruntime 1.32 reused the first call's allocation plan inside the tokenizer's "
                       "Loop and crashed on a later text")
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

def removed_pattern() -> str:
    """What BERT's normalizer deletes (clean_text) and the operator keeps: control, format
    and private-use characters but tab, newline and carriage return, and U+FFFD. As explicit
    ranges: ONNX Runtime Extensions compiles the regex on every call, and `\\P{C}` costs
    a tenth of a millisecond to compile where ranges cost next to nothing."""
    import unicodedata

    removed = [chr(code) for code in range(0x110000) if not 0xD800 <= code < 0xE000
               and unicodedata.category(chr(code)) in ("Cc", "Cf", "Co") and chr(code) not in "\t\n\r"]
    return character_class(removed + ["\ufffd"])


def tokenizer_model(settings: WordPieceSettings, *, max_length: int, pair: bool, opset: int,
                    ir_version: int, unsafe: str = "") -> onnx.ModelProto:
    """Strings (batch,) [and pairs (batch,)] -> input_ids, token_type_ids, attention_mask
    (batch, longest row), rows padded on the right with the pad id, and `exact` (batch,):
    false for a row whose ids hold [UNK] (the operator keeps the pieces of a word before an
    unknown one, the Python tokenizer makes the whole word [UNK]) or that holds a match of
    `unsafe` (see `unsafe_characters`), whose ids the operator does not give as the Python
    tokenizer does. ONNX Runtime Extensions compiles a regex on every call, so the
    pattern is kept to what the [UNK] test does not catch."""
    texts = [TEXT_INPUT, PAIR_INPUT] if pair else [TEXT_INPUT]
    exact_chars = "exact_chars"
    cleaning, flags = [], []
    for text in texts:
        cleaning.append(helper.make_node("StringRegexReplace", [text, "removed_pattern", "nothing"],
                                         [f"{text}_clean"], domain=CONTRIB_DOMAIN))
        if unsafe:
            cleaning += [helper.make_node("StringRegexReplace", [f"{text}_clean", "unsafe_pattern", "nothing"],
                                          [f"{text}_safe"], domain=CONTRIB_DOMAIN),
                         helper.make_node("StringEqual", [f"{text}_clean", f"{text}_safe"], [f"{text}_exact"],
                                          domain=CONTRIB_DOMAIN)]
            flags.append(f"{text}_exact")
    string = lambda name, value: helper.make_node(
        "Constant", [], [name], value=helper.make_tensor(name, TensorProto.STRING, [1], [value.encode()]))
    cleaning += [string("removed_pattern", removed_pattern()), string("nothing", "")]
    if unsafe:
        cleaning.append(string("unsafe_pattern", unsafe))
        cleaning.append(helper.make_node("And", flags, [exact_chars]) if pair else
                        helper.make_node("Identity", flags, [exact_chars]))
    else:
        cleaning += [helper.make_node("Shape", [TEXT_INPUT], ["text_shape"]),
                     helper.make_node("ConstantOfShape", ["text_shape"], [exact_chars],
                                      value=helper.make_tensor("true", TensorProto.BOOL, [1], [True]))]
    body = _row_graph(settings, max_length=max_length, pair=pair)
    nodes = cleaning + [
        helper.make_node("Shape", [TEXT_INPUT], ["rows_1d"]),
        helper.make_node("Squeeze", ["rows_1d"], ["rows"]),
        helper.make_node("Constant", [], ["always"], value=helper.make_tensor("always", TensorProto.BOOL, [], [True])),
        helper.make_node("Loop", ["rows", "always"], [f"{name}_full" for name in ID_OUTPUTS], body=body),
        helper.make_node("ReduceSum", ["attention_mask_full", "axis_1"], ["lengths"], keepdims=0),
        helper.make_node("ReduceMax", ["lengths"], ["longest"], keepdims=1),
        helper.make_node("Constant", [], ["axis_1"], value=helper.make_tensor("axis_1", TensorProto.INT64, [1], [1])),
        helper.make_node("Constant", [], ["zero_1"], value=helper.make_tensor("zero_1", TensorProto.INT64, [1], [0])),
    ]
    for name in ID_OUTPUTS:
        nodes.append(helper.make_node("Slice", [f"{name}_full", "zero_1", "longest", "axis_1"], [name]))
    unk = settings.vocab.index(settings.unk_token)
    nodes += [helper.make_node("Constant", [], ["unk_id"], value=helper.make_tensor("unk_id", TensorProto.INT64, [], [unk])),
              helper.make_node("Equal", ["input_ids_full", "unk_id"], ["is_unk"]),
              helper.make_node("Cast", ["is_unk"], ["is_unk_int"], to=TensorProto.INT64),
              helper.make_node("ReduceSum", ["is_unk_int", "axis_1"], ["unk_count"], keepdims=0),
              helper.make_node("Cast", ["unk_count"], ["has_unk"], to=TensorProto.BOOL),
              helper.make_node("Not", ["has_unk"], ["no_unk"])]
    if pair:  # the operator cuts a pair past max_length otherwise than the Python tokenizer: flagged
        nodes += [helper.make_node("Constant", [], ["max_length_value"],
                                   value=helper.make_tensor("max_length_value", TensorProto.INT64, [], [max_length])),
                  helper.make_node("Less", ["lengths", "max_length_value"], ["not_cut"]),
                  helper.make_node("And", ["no_unk", "not_cut"], ["row_exact"])]
    nodes.append(helper.make_node("And", [exact_chars, "row_exact" if pair else "no_unk"], [EXACT_OUTPUT]))
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
    nodes.append(helper.make_node(
        "BertTokenizer", [row], ["ids", "types", "mask", "offsets"], domain=CONTRIB_DOMAIN,
        vocab_file="\n".join(settings.vocab), do_lower_case=int(settings.lowercase),
        strip_accents=int(settings.strip_accents), tokenize_chinese_chars=int(settings.handle_chinese_chars),
        unk_token=settings.unk_token, cls_token=settings.cls_token, sep_token=settings.sep_token,
        pad_token=settings.pad_token, mask_token=settings.mask_token, max_length=max_length,
        truncation_strategy_name="longest_first"))
    for name, value, pad in (("ids", "input_ids", settings.pad_id), ("types", "token_type_ids", 0),
                             ("mask", "attention_mask", 0)):
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


def string_feeds(texts: list[str], pairs: list[str] | None) -> dict[str, np.ndarray]:
    feeds = {TEXT_INPUT: np.array(texts, dtype=object)}
    if pairs is not None:
        feeds[PAIR_INPUT] = np.array(pairs, dtype=object)
    return feeds


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
        python_ids = tokenizer(texts, [""] * len(texts) if pair else None, truncation=True,
                               max_length=16)["input_ids"]  # as the graph is fed: an empty second text
        unsafe.update(c for c, ours, theirs in zip(characters, graph_ids, python_ids)
                      if ours != theirs and unk not in ours)
    return sorted(unsafe)


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


def character_class(characters: list[str]) -> str:
    """An RE2 class matching exactly `characters`, as ranges of code points."""
    if not characters:
        return ""
    codes = sorted(ord(c) for c in characters)
    ranges, first, last = [], codes[0], codes[0]
    for code in codes[1:]:
        if code == last + 1:
            last = code
            continue
        ranges.append((first, last))
        first = last = code
    ranges.append((first, last))
    return "[" + "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges) + "]"


# ------------------------------------------------------------------------------ in an export

def custom_ops_record() -> dict:
    """What the app must register, for the manifest."""
    from importlib import metadata

    return {"custom_ops": {
        "library": "onnxruntime-extensions", "version": metadata.version("onnxruntime-extensions"),
        "domain": CONTRIB_DOMAIN,
        "python": "SessionOptions.register_custom_ops_library(onnxruntime_extensions.get_library_path())",
        "session_options": {"enable_mem_pattern": False},
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
    plain = tokenizer_model(settings, max_length=max_length, pair=pair, opset=opset, ir_version=ir_version)
    characters = unsafe_characters(_session(plain), tokenizer, pair=pair)
    pattern = unsafe_pattern(characters, tokenizer.all_special_tokens)
    return TextFront(model=tokenizer_model(settings, max_length=max_length, pair=pair, opset=opset,
                                           ir_version=ir_version, unsafe=pattern),
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
