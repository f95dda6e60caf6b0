"""Vocabulary trimming: a student that knows only the tokens of its training text.

A small student's word embeddings are most of its weights (MiniLM's 30,522 x 384 are 11.7M of
22.7M parameters). `--trim-vocab` keeps the special tokens, the ids the model's config names
and every token the training text is tokenized into (at least `min_count` times), then
rewrites the embedding rows (and a causal LM's output head, tied or not), `config.vocab_size`
and the tokenizer, so that every kept text tokenizes into exactly the same tokens as before:
a student id `i` is the teacher id `kept[i]`, in the teacher's order.

Why kept text tokenizes the same: every tokenizer model here picks among its pieces and only
loses pieces it never picked on that text. WordPiece's longest match at each position was
kept, and a longer one did not exist; a word-level vocabulary keeps every word it saw; a Unigram's best segmentation is still there and
nothing better was added; a BPE keeps the merges that built each kept token (the whole chain,
down to single characters or bytes) and drops merges that never fired on the text. On other
text a removed piece becomes other kept pieces, or the unknown token: the coverage report
counts the held-out words whose tokens changed. A tokenizer without the fast (tokenizers)
engine is refused by name.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgekd.errors import UserError

MODELS = ("WordPiece", "Unigram", "BPE", "WordLevel")
CONFIG_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                    "decoder_start_token_id", "unk_token_id", "mask_token_id")


@dataclass(frozen=True)
class Coverage:
    """How held-out text fares with the trimmed tokenizer."""

    words: int
    changed_words: int
    tokens: int  # held-out tokens under the original tokenizer
    unknown_tokens: int  # of the trimmed tokenizer's tokens on the same text, how many are unknown

    @property
    def changed_share(self) -> float:
        return self.changed_words / self.words if self.words else 0.0

    def as_dict(self) -> dict:
        return {"held_out_words": self.words, "changed_words": self.changed_words,
                "changed_share": self.changed_share, "held_out_tokens": self.tokens,
                "unknown_tokens": self.unknown_tokens}


@dataclass(frozen=True)
class Trim:
    kept: list[int]  # original token ids, in the trimmed id order
    original_size: int
    min_count: int

    def as_dict(self) -> dict:
        return {"kept_tokens": len(self.kept), "original_tokens": self.original_size, "min_count": self.min_count}


def _backend(tokenizer):
    """A copy of the fast tokenizer's engine with padding and truncation off."""
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"--trim-vocab needs a fast (tokenizers-backed) tokenizer; {type(tokenizer).__name__} "
                        "is not one: save the teacher with its fast tokenizer, or drop --trim-vocab")
    engine = Tokenizer.from_str(backend.to_str())
    engine.no_padding()
    engine.no_truncation()
    return engine


def _model_type(spec: dict) -> str:
    kind = spec["model"]["type"]
    if kind not in MODELS:
        raise UserError(f"--trim-vocab cannot trim a {kind} tokenizer exactly (it trims "
                        f"{', '.join(MODELS)}); drop --trim-vocab")
    return kind


def kept_tokens(tokenizer, texts: list[str], *, model_config=None, min_count: int = 1) -> Trim:
    """The token ids a student trained on `texts` keeps, ascending."""
    if min_count < 1:
        raise UserError(f"--trim-vocab-min-count must be at least 1, got {min_count}")
    if not texts:
        raise UserError("--trim-vocab needs training text to find the tokens it uses")
    engine = _backend(tokenizer)  # refuses a tokenizer without the fast engine
    spec = json.loads(engine.to_str())
    kind = _model_type(spec)
    counts: Counter = Counter()
    for start in range(0, len(texts), 256):
        for encoding in engine.encode_batch(texts[start:start + 256], add_special_tokens=False):
            counts.update(encoding.ids)
    kept = {token for token, count in counts.items() if count >= min_count}
    kept |= {item["id"] for item in spec.get("added_tokens", [])}  # special and added tokens
    kept |= set(tokenizer.all_special_ids)
    for name in CONFIG_TOKEN_IDS:
        value = getattr(model_config, name, None) if model_config is not None else None
        if isinstance(value, int) and value >= 0:
            kept.add(value)
    model = spec["model"]
    if kind in ("WordPiece", "WordLevel") and model.get("unk_token") in model["vocab"]:
        kept.add(model["vocab"][model["unk_token"]])
    if kind == "Unigram" and model.get("unk_id") is not None:
        kept.add(model["unk_id"])
    if kind == "BPE":
        kept |= _bpe_closure(model, kept)
    if kind in ("Unigram", "BPE") and model.get("byte_fallback"):
        kept |= {i for piece, i in _pieces(model).items() if len(piece) == 6 and piece.startswith("<0x")}
    size = len(tokenizer)
    return Trim(kept=sorted(t for t in kept if 0 <= t < max(size, _vocab_size(model))),
                original_size=size, min_count=min_count)


def _pieces(model: dict) -> dict[str, int]:
    if model["type"] == "Unigram":
        return {piece: i for i, (piece, _) in enumerate(model["vocab"])}
    return dict(model["vocab"])


def _vocab_size(model: dict) -> int:
    return len(model["vocab"])


def _merge_pair(merge) -> tuple[str, str]:
    return tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge)


def _bpe_closure(model: dict, kept: set[int]) -> set[int]:
    """Every piece a kept piece is merged from, down to single characters (or bytes); and
    every single character, so any text still tokenizes into something."""
    vocab = model["vocab"]
    parents: dict[str, list[tuple[str, str]]] = {}
    for merge in model.get("merges", []):
        left, right = _merge_pair(merge)
        parents.setdefault(left + right, []).append((left, right))
    pieces = {i: piece for piece, i in vocab.items()}
    prefix, suffix = model.get("continuing_subword_prefix") or "", model.get("end_of_word_suffix") or ""

    def single(piece: str) -> bool:  # one character (or byte), marked or not as inside or ending a word
        if prefix and piece.startswith(prefix):
            piece = piece[len(prefix):]
        if suffix and piece.endswith(suffix):
            piece = piece[:-len(suffix)]
        return len(piece) == 1

    closure = {i for piece, i in vocab.items() if single(piece)}
    stack = [pieces[i] for i in kept if i in pieces]
    while stack:
        piece = stack.pop()
        for pair in parents.get(piece, []):
            for part in pair:
                if part in vocab and vocab[part] not in closure and vocab[part] not in kept:
                    closure.add(vocab[part])
                    stack.append(part)
    return closure


# ---------------------------------------------------------------------------- the tokenizer

def trimmed_tokenizer(tokenizer, trim: Trim):
    """`tokenizer` knowing only `trim.kept`, renumbered in that order."""
    from transformers import AutoTokenizer

    new_id = {old: new for new, old in enumerate(trim.kept)}
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model["type"] == "Unigram":
        model["vocab"] = [model["vocab"][old] for old in trim.kept if old < len(model["vocab"])]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[model["unk_id"]]
    else:
        model["vocab"] = {piece: new_id[old] for piece, old in model["vocab"].items() if old in new_id}
    if model["type"] == "BPE":
        vocab = model["vocab"]
        model["merges"] = [merge for merge in model.get("merges", [])
                           if all(part in vocab for part in _merge_pair(merge))
                           and "".join(_merge_pair(merge)) in vocab]
    spec["added_tokens"] = [dict(item, id=new_id[item["id"]]) for item in spec.get("added_tokens", [])]
    _renumber_processor(spec.get("post_processor"), new_id)
    if spec.get("padding") and spec["padding"].get("pad_id") is not None:
        spec["padding"]["pad_id"] = new_id.get(spec["padding"]["pad_id"], 0)
    with tempfile.TemporaryDirectory(prefix="edgekd-vocab-") as scratch:
        folder = Path(scratch)
        tokenizer.save_pretrained(folder)
        for path in folder.iterdir():  # the slow tokenizer's files would still hold the whole vocabulary
            if path.name in ("vocab.txt", "vocab.json", "merges.txt") or path.suffix == ".model":
                path.unlink()
        (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        if "added_tokens_decoder" in config:
            config["added_tokens_decoder"] = {str(new_id[int(old)]): value
                                              for old, value in config["added_tokens_decoder"].items()}
        config.pop("vocab_file", None)
        config.pop("merges_file", None)
        config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2))
        trimmed = AutoTokenizer.from_pretrained(folder)
        trimmed.name_or_path = tokenizer.name_or_path
    if len(trimmed) != len(trim.kept):
        raise UserError(f"trimming the vocabulary left a tokenizer of {len(trimmed)} tokens where "
                        f"{len(trim.kept)} were kept; drop --trim-vocab")
    return trimmed


def _renumber_processor(processor: dict | None, new_id: dict[int, int]) -> None:
    if not processor:
        return
    for inner in processor.get("processors", []):  # a Sequence of processors
        _renumber_processor(inner, new_id)
    for special in (processor.get("special_tokens") or {}).values():  # TemplateProcessing
        special["ids"] = [new_id[i] for i in special["ids"]]
    for key in ("sep", "cls"):  # BertProcessing, RobertaProcessing: [token, id]
        if isinstance(processor.get(key), list):
            processor[key] = [processor[key][0], new_id[processor[key][1]]]


# ---------------------------------------------------------------------------- the model

@torch.no_grad()
def trim_model(model: nn.Module, trim: Trim) -> nn.Module:
    """`model` with only the kept rows of its token embedding (and output head), in place."""
    index = torch.tensor(trim.kept, dtype=torch.long)
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, nn.Embedding):
        raise UserError(f"{type(model).__name__}'s token embedding is a {type(embedding).__name__}, which "
                        "--trim-vocab cannot rewrite; drop --trim-vocab")
    if int(index.max()) >= embedding.num_embeddings:
        raise UserError(f"the tokenizer uses id {int(index.max())} but {type(model).__name__} embeds only "
                        f"{embedding.num_embeddings} tokens; the model and tokenizer do not belong together")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = head is not None and head.weight is embedding.weight
    padding = embedding.padding_idx
    new_padding = trim.kept.index(padding) if padding is not None and padding in trim.kept else None
    small = nn.Embedding(len(index), embedding.embedding_dim, padding_idx=new_padding,
                         dtype=embedding.weight.dtype, device=embedding.weight.device)
    small.weight.copy_(embedding.weight.index_select(0, index))
    model.set_input_embeddings(small)
    if head is not None:
        if tied:
            head.weight = small.weight
        else:
            head.weight = nn.Parameter(head.weight.index_select(0, index).clone())
        if getattr(head, "bias", None) is not None:
            head.bias = nn.Parameter(head.bias.index_select(0, index).clone())
        head.out_features = len(index)
    new_id = {old: new for new, old in enumerate(trim.kept)}
    config = model.config
    config.vocab_size = len(index)
    for holder in (config, getattr(model, "generation_config", None)):
        for name in CONFIG_TOKEN_IDS:
            value = getattr(holder, name, None) if holder is not None else None
            if isinstance(value, int) and value >= 0:
                setattr(holder, name, new_id[value])
            elif isinstance(value, list):
                setattr(holder, name, [new_id[v] for v in value])
    return model


# ---------------------------------------------------------------------------- coverage

def coverage(original, trimmed, texts: list[str]) -> Coverage:
    """Held-out words whose tokens (as text) differ between the two tokenizers."""
    first, second = _backend(original), _backend(trimmed)
    unknown = trimmed.unk_token_id
    words = changed = tokens = unknown_tokens = 0
    for start in range(0, len(texts), 256):
        chunk = texts[start:start + 256]
        for before, after in zip(first.encode_batch(chunk, add_special_tokens=False),
                                 second.encode_batch(chunk, add_special_tokens=False)):
            tokens += len(before.ids)
            unknown_tokens += sum(i == unknown for i in after.ids) if unknown is not None else 0
            old, new = _by_word(before), _by_word(after)
            words += len(old)
            changed += sum(old[word] != new.get(word) for word in old)
    return Coverage(words=words, changed_words=changed, tokens=tokens, unknown_tokens=unknown_tokens)


def coverage_record(original, trimmed, texts: list[str]) -> dict:
    """A bench row's `vocabulary`: the two vocabularies' sizes and the coverage of `texts`."""
    return {"kept_tokens": len(trimmed), "original_tokens": len(original),
            **coverage(original, trimmed, texts).as_dict()}


def _by_word(encoding) -> dict[int, list[str]]:
    words: dict[int, list[str]] = {}
    for word, token in zip(encoding.word_ids, encoding.tokens):
        if word is not None:
            words.setdefault(word, []).append(token)
    return words


# ---------------------------------------------------------------------------- the whole step

def trim_vocabulary(model: nn.Module, tokenizer, texts: list[str], *, held_out: list[str] | None = None,
                    min_count: int = 1) -> tuple[nn.Module, object, dict]:
    """The model (in place) and tokenizer trimmed to `texts`' tokens, and a record of what was
    kept (with coverage on `held_out` when given)."""
    return plan_trim(tokenizer, texts, held_out=held_out, min_count=min_count,
                     model_config=model.config).trimmed(model)


def _check_same_tokens(original, trimmed, trim: Trim, texts: list[str]) -> None:
    """Kept text gives the same tokens, special ones included: else nothing is written. A text
    holding a token that --trim-vocab-min-count dropped (too rare) tokenizes otherwise by design
    and is not held to it."""
    before = _backend(original).encode_batch(texts)
    after = _backend(trimmed).encode_batch(texts)
    kept = set(trim.kept)
    for text, old, new in zip(texts, before, after):
        if trim.min_count > 1 and not kept.issuperset(old.ids):
            continue
        if [trim.kept[i] for i in new.ids] != old.ids:
            raise UserError(f"trimming the vocabulary changed how training text tokenizes ({text[:40]!r}); "
                            "this tokenizer cannot be trimmed exactly: drop --trim-vocab")


@dataclass(frozen=True)
class VocabTrim:
    """What `--trim-vocab` asks of a distillation stage, worked out (and checked exact) once by
    `plan_trim` before training, applied to the student the stage saves."""

    original: object  # the tokenizer trimmed
    tokenizer: object  # the trimmed tokenizer
    trim: Trim
    held_out: list[str] | None = None  # text not trained on, for the coverage report
    max_drop: float | None = None  # validation accuracy points the trim may cost a classifier (None: unjudged)

    def apply(self, model: nn.Module) -> tuple[nn.Module, object, dict]:
        """A trimmed copy of `model` (which is left whole), the trimmed tokenizer and the record."""
        return self.trimmed(copy.deepcopy(model))

    def trimmed(self, model: nn.Module) -> tuple[nn.Module, object, dict]:
        """`model` trimmed in place, the trimmed tokenizer and the record."""
        trim_model(model, self.trim)
        record = self.trim.as_dict()
        if self.held_out:
            record["coverage"] = coverage(self.original, self.tokenizer, self.held_out).as_dict()
        return model, self.tokenizer, record


def plan_trim(tokenizer, texts: list[str], *, held_out: list[str] | None = None, min_count: int = 1,
              model_config=None) -> VocabTrim:
    """What trimming `tokenizer` to `texts`' tokens keeps; fails now, before any training, if the
    trimmed tokenizer would not give kept text the same tokens."""
    trim = kept_tokens(tokenizer, texts, model_config=model_config, min_count=min_count)
    small = trimmed_tokenizer(tokenizer, trim)
    _check_same_tokens(tokenizer, small, trim, texts[:256])
    return VocabTrim(original=tokenizer, tokenizer=small, trim=trim, held_out=held_out)


RECORD = "vocabulary.json"


def save_record(folder: Path, record: dict) -> None:
    """What was kept, beside the student, for people and later stages."""
    (Path(folder) / RECORD).write_text(json.dumps(record, indent=2) + "\n")


def describe(record: dict) -> str:
    """One line for the terminal."""
    line = f"vocabulary trimmed to {record['kept_tokens']:,} of {record['original_tokens']:,} tokens"
    if "coverage" in record:
        line += (f"; {100 * record['coverage']['changed_share']:.2f}% of held-out words "
                 "tokenize differently")
    if record.get("not_kept"):
        line = f"the trim was not kept ({record['not_kept']}); " + line.replace("trimmed to", "would keep")
    elif "accuracy_change" in record:
        line += f"; validation accuracy {record['accuracy_change']:+.2f} points after trimming"
    return line


