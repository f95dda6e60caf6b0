"""A causal LM's prompt encoder as an ONNX model (`edgekd export --with-tokenizer`).

An app that runs the exported decoder must turn a prompt into exactly the token ids the
Python tokenizer gives. With `--with-tokenizer` each ONNX/.ort artifact folder of a causal
LM also holds `prompt_encoder.onnx` (or `.ort`): a batch of strings in, `input_ids` and
`attention_mask` out (rows padded on the right to the longest), one ONNX Runtime
Extensions operator, `HfJsonTokenizer`, that reads the student's own `tokenizer.json`.

Nothing approximate is shipped unmarked. A census at export runs every assigned code point,
alone and inside a word, through the operator and the Python tokenizer; the characters whose
ids differ (onnxruntime-extensions 0.15.2 drops the character after a "<" that starts no
special token, and reads some control characters otherwise) make a third output, `exact`,
false for a prompt holding one outside the tokenizer's special tokens. Every prompt marked
exact is then checked on the held-out text and `HOSTILE_TEXTS`: one differing id refuses the
export, as does a tokenizer the operator has no algorithm for.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgekd.errors import UserError
from edgekd.exporting.tokenizer_graph import (CONTRIB_DOMAIN, HOSTILE_TEXTS, NUL_NOTE, character_class,
                                           custom_ops_record)

MODEL_FILE = "prompt_encoder.onnx"
ORT_MODEL_FILE = "prompt_encoder.ort"
REQUIRED_OPERATORS_FILE = "required_operators.prompt_encoder.config"
INPUT, OUTPUTS, EXACT = "text", ("input_ids", "attention_mask"), "exact"
EXACT_NOTE = ("`exact` is false for a prompt holding a character the census at export found the operator "
              "tokenizes otherwise (outside the tokenizer's special tokens); tokenize such prompts in the app")
# The operator picks its algorithm from tokenizer_config.json's class name; transformers 5
# saves every fast tokenizer as "TokenizersBackend", which it does not know. Byte-level BPE
# (GPT-2, Llama 3, SmolLM, Qwen) is the GPT-2 algorithm whatever the class.
BYTE_LEVEL_CLASS = "GPT2Tokenizer"


def tokenizer_files(tokenizer) -> tuple[str, str]:
    """The (tokenizer_config.json, tokenizer.json) texts the operator is built from; a
    tokenizer it has no exact algorithm for is refused by name."""
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise _refused(tokenizer, "it is not a fast (tokenizers) tokenizer")
    with tempfile.TemporaryDirectory(prefix="edgekd-tokenizer-") as scratch:
        tokenizer.save_pretrained(scratch)
        config = json.loads((Path(scratch) / "tokenizer_config.json").read_text())
        vocab = (Path(scratch) / "tokenizer.json").read_text()
    spec = json.loads(vocab)
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    pre_types = {pre.get("type")} | {step.get("type") for step in pre.get("pretokenizers") or ()}
    if model.get("type") == "BPE" and "ByteLevel" in pre_types:
        config["tokenizer_class"] = BYTE_LEVEL_CLASS
    else:
        raise _refused(tokenizer, f"its model is {model.get('type')} with pre-tokenizer "
                                  f"{pre.get('type') or 'none'}, and only byte-level BPE is built")
    return json.dumps(config), vocab


def _refused(tokenizer, reason: str) -> UserError:
    return UserError(f"--with-tokenizer: the causal LM's tokenizer ({type(tokenizer).__name__}) cannot be "
                     f"reproduced exactly by ONNX Runtime Extensions' operators: {reason}; export without "
                     "--with-tokenizer and tokenize prompts in the app")


def encoder_model(tokenizer, *, unsafe: str = "", opset: int = 17, ir_version: int = 8) -> onnx.ModelProto:
    """Strings (batch,) -> input_ids, attention_mask (batch, longest row) and `exact`
    (batch,): false where the text, its special tokens taken out, holds a match of
    `unsafe`. Two regexes, compiled on every call: nothing beside a decoder's steps."""
    import re

    config, vocab = tokenizer_files(tokenizer)
    string = lambda name, value: helper.make_node(
        "Constant", [], [name], value=helper.make_tensor(name, TensorProto.STRING, [1], [value.encode()]))
    nodes = [helper.make_node("HfJsonTokenizer", [INPUT], list(OUTPUTS), domain=CONTRIB_DOMAIN,
                              tokenizer_config=config, tokenizer_vocab=vocab)]
    if unsafe:
        specials = "|".join(re.escape(token) for token in sorted({t for t in tokenizer.all_special_tokens if t},
                                                                 key=len, reverse=True))
        nodes += [string("nothing", ""), string("unsafe_pattern", unsafe)]
        stripped = INPUT
        if specials:
            nodes += [string("special_pattern", specials),
                      helper.make_node("StringRegexReplace", [INPUT, "special_pattern", "nothing"], ["plain_text"],
                                       domain=CONTRIB_DOMAIN)]
            stripped = "plain_text"
        nodes += [helper.make_node("StringRegexReplace", [stripped, "unsafe_pattern", "nothing"], ["safe_text"],
                                   domain=CONTRIB_DOMAIN),
                  helper.make_node("StringEqual", [stripped, "safe_text"], [EXACT], domain=CONTRIB_DOMAIN)]
    else:
        nodes += [helper.make_node("Shape", [INPUT], ["rows"]),
                  helper.make_node("ConstantOfShape", ["rows"], [EXACT],
                                   value=helper.make_tensor("true", TensorProto.BOOL, [1], [True]))]
    graph = helper.make_graph(
        nodes, "edgekd_prompt_encoder", [helper.make_tensor_value_info(INPUT, TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"]) for name in OUTPUTS]
        + [helper.make_tensor_value_info(EXACT, TensorProto.BOOL, ["batch"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid(CONTRIB_DOMAIN, 1)])
    model.ir_version = ir_version
    return model


def build_encoder(tokenizer) -> tuple[onnx.ModelProto, int]:
    """The encoder and the number of characters its `exact` output flags, from the census."""
    from edgekd.exporting.tokenizer_graph import _session

    session = _session(encoder_model(tokenizer))
    _, differences = _compare(session, tokenizer, census_texts())
    characters = sorted({text if len(text) == 1 else text[1] for text, _, _ in differences})
    return encoder_model(tokenizer, unsafe=character_class(characters)), len(characters)


def census_texts() -> list[str]:
    """Every assigned code point (but NUL, which no C string carries), alone and inside a word."""
    import unicodedata

    characters = [chr(code) for code in range(1, 0x110000) if not 0xD800 <= code < 0xE000
                  and unicodedata.category(chr(code)) not in ("Cn", "Cs")]
    return characters + [f"x{c}x" for c in characters]


def _compare(session, tokenizer, texts: list[str], batch_size: int = 4096) -> tuple[int, list[tuple]]:
    """How many of `texts` the encoder marks exact, and (text, its ids, the tokenizer's) for
    each of those it tokenizes otherwise (rows padded as the graph pads them)."""
    marked, differences = 0, []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        ids, mask, exact = session.run([*OUTPUTS, EXACT], {INPUT: np.array(chunk, dtype=object)})
        marked += int(exact.sum())
        for row, expected in enumerate(tokenizer(chunk)["input_ids"]):
            produced = ids[row][mask[row] == 1].tolist()
            if exact[row] and produced != expected:
                differences.append((chunk[row], produced, expected))
    return marked, differences


def check_encoder(session, tokenizer, *, texts: list[str], source: str) -> dict:
    """The encoder's ids against `tokenizer(text)` on every row it marks exact of `texts`,
    `HOSTILE_TEXTS` and the special tokens written in context; one difference refuses the
    export."""
    specials = [t for t in tokenizer.all_special_tokens if t]
    hostile = list(HOSTILE_TEXTS) + [form.replace("{}", t) for t in specials for form in ("x{}x", "{}{}", "a {} b", "{}<x")]
    record = {}
    for name, rows in ((source, list(texts)), ("hostile set", hostile)):
        marked, differences = _compare(session, tokenizer, rows)
        for text, produced, expected in differences[:1]:
            raise UserError(
                f"--with-tokenizer: the operator's prompt ids differ from the Python tokenizer's on {text[:60]!r} "
                f"({name}: {produced[:8]} against {expected[:8]}); the tokenizer cannot be reproduced exactly, "
                "export without --with-tokenizer")
        record[name] = {"rows": len(rows), "exact": marked, "flagged": len(rows) - marked}
    return record


def encoder_record(path: Path, checks: dict, **details) -> dict:
    """The manifest's `prompt_encoder` entry."""
    return {"model_file": path.name, "inputs": {INPUT: ["batch"]},
            "outputs": {**{name: ["batch", "sequence"] for name in OUTPUTS}, EXACT: ["batch"]}, "padding": "right",
            "size_bytes": path.stat().st_size, **custom_ops_record(), **details, "token_parity": checks,
            "notes": [EXACT_NOTE, NUL_NOTE]}
