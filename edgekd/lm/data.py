"""Text for language modelling: tokenise, mark which tokens are learnt, batch.

Each text becomes one example, truncated to `max_length` tokens; packed (`pack`), the texts
are instead joined end to end, each followed by the end-of-text token, and cut into full
sequences of `max_length` tokens, so no token of a long text is dropped and no step is spent
on padding (a sequence may span two texts, as in the pretraining the teachers had). An
optional prompt is prepended and masked out of the loss (labels -100), as is padding;
examples are padded on the right to the longest in their batch.
"""

from __future__ import annotations

import array
import hashlib
import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from edgekd.data import texts_digest, tokenizer_digest
from edgekd.errors import UserError


class TokenRows(Sequence[list]):
    """Rows of numbers (token ids, learnt flags) in one flat array with offsets: 4 bytes a token
    id, where a list of Python ints costs 8 to 36. Row i is a list when read."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        self.flat, self.offsets = flat, offsets

    @classmethod
    def of(cls, rows, dtype=np.int32) -> TokenRows:
        """`rows` (TokenRows, or lists) as TokenRows."""
        if isinstance(rows, TokenRows):
            return rows
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=dtype, count=int(lengths.sum()))
        return cls(flat, np.concatenate([[0], np.cumsum(lengths)]))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self.take(range(*key.indices(len(self))))
        index = range(len(self))[key]
        return self.flat[self.offsets[index]:self.offsets[index + 1]].tolist()

    def firsts(self) -> np.ndarray:
        """Where in `flat` each non-empty row starts."""
        return self.offsets[:-1][np.diff(self.offsets) > 0]

    def row(self, index: int) -> np.ndarray:
        """Row `index` as an array (a view)."""
        return self.flat[self.offsets[index]:self.offsets[index + 1]]

    def take(self, indices: Sequence[int]) -> TokenRows:
        rows = [self.row(i) for i in indices]
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        flat = np.concatenate(rows) if rows else self.flat[:0]
        return TokenRows(flat, np.concatenate([[0], np.cumsum(lengths)]))

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(other) == len(self) and list(self) == list(other)

    __hash__ = None

    def digest(self) -> str:
        """SHA-256 of the rows' values (as int64) and where each row starts."""
        digest = hashlib.sha256(self.offsets.astype(np.int64).tobytes())
        for start in range(0, len(self.flat), 1 << 20):  # 8 MB at a time
            digest.update(self.flat[start:start + (1 << 20)].astype(np.int64).tobytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class LMExamples:
    """Token ids per example and, per token, whether it is learnt (not prompt): TokenRows from
    `encode_texts`, or lists."""

    input_ids: Sequence[Sequence[int]]
    learnt: Sequence[Sequence[bool]]
    pad_token_id: int
    known_digest: str | None = None  # stored tokens: the key of what they were made from

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, indices: Sequence[int]) -> LMExamples:
        take = lambda rows: rows.take(indices) if isinstance(rows, TokenRows) else [rows[i] for i in indices]  # noqa: E731
        return LMExamples(input_ids=take(self.input_ids), learnt=take(self.learnt), pad_token_id=self.pad_token_id)

    @property
    def predicted_tokens(self) -> int:
        """Next-token predictions that count: learnt tokens after the first position."""
        learnt = TokenRows.of(self.learnt, dtype=np.bool_)
        return int(learnt.flat.sum()) - int(learnt.flat[learnt.firsts()].sum())

    def digest(self) -> str:
        """What the examples' tokens hash to (the top-k cache's key); for stored tokens, what
        they were made from (the same texts, tokenizer and options make the same tokens)."""
        return self.known_digest or TokenRows.of(self.input_ids).digest()

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The examples at `indices`, padded into one batch (`collate`)."""
        return collate(self, indices)


TOKENISE_ROWS = 1024  # texts handed to the tokenizer at once (its batch call is several times faster)


def encode_texts(texts: Sequence[str], tokenizer, *, max_length: int,
                 prompts: Sequence[str] | None = None, pack: bool = False, store: Path | None = None) -> LMExamples:
    """Tokenise; texts shorter than two tokens are dropped (nothing to predict). `pack`: every
    token kept, in full sequences of `max_length` (the last one may be shorter). The tokens go
    into flat arrays as they come (TokenRows): 5 bytes a token, in memory; with `store` (a
    folder), on disk: tokenised once into `<store>/<key>/` (the key: the texts, the prompts, the
    tokenizer's files and these options), memory-mapped, and reused by later runs."""
    if prompts is not None and len(prompts) != len(texts):
        raise UserError(f"{len(prompts)} prompts for {len(texts)} texts; give one prompt per text")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise UserError("the tokenizer has neither a pad nor an end-of-text token; add one")
    if pack and tokenizer.eos_token_id is None:
        raise UserError("--pack joins texts with the end-of-text token and the tokenizer has none; "
                        "leave --pack out")
    tokens = _tokens(texts, tokenizer, max_length=max_length, prompts=prompts, pack=pack)
    if store is None:
        ids, learnt, offsets = array.array("i"), array.array("b"), array.array("q", [0])
        for row_ids, row_learnt in tokens:
            ids.extend(row_ids)
            learnt.extend(row_learnt)
            offsets.append(len(ids))
        arrays = (np.frombuffer(ids, dtype=np.int32), np.frombuffer(learnt, dtype=np.bool_),
                  np.frombuffer(offsets, dtype=np.int64))
        digest = None
    else:
        arrays, digest = _stored_tokens(tokens, folder=Path(store), key={
            "texts": texts_digest(texts), "prompts": None if prompts is None else texts_digest(prompts),
            "tokenizer": tokenizer_digest(tokenizer), "max_length": max_length, "pack": pack})
    flat_ids, flat_learnt, offsets = arrays
    if pack:  # full sequences of max_length; a last piece of one token is dropped (nothing to predict)
        offsets = np.append(np.arange(0, len(flat_ids), max_length), len(flat_ids))
        if len(offsets) > 1 and offsets[-1] - offsets[-2] < 2:
            offsets = offsets[:-1]
            flat_ids, flat_learnt = flat_ids[:offsets[-1]], flat_learnt[:offsets[-1]]
    if len(offsets) < 2:
        raise UserError("no text has two or more tokens; give longer training texts")
    return LMExamples(input_ids=TokenRows(flat_ids, offsets), learnt=TokenRows(flat_learnt, offsets),
                      pad_token_id=int(pad), known_digest=digest)


def _tokens(texts: Sequence[str], tokenizer, *, max_length: int, prompts: Sequence[str] | None,
            pack: bool) -> Iterator[tuple[list[int], bytes]]:
    """Each kept text's token ids and learnt flags, the texts tokenised TOKENISE_ROWS at a time."""
    from edgekd.data import _taken

    for start in range(0, len(texts), TOKENISE_ROWS):
        rows = range(start, min(start + TOKENISE_ROWS, len(texts)))
        text_ids = tokenizer(_taken(texts, rows), add_special_tokens=False)["input_ids"]
        prompt_ids = (tokenizer(_taken(prompts, rows), add_special_tokens=False)["input_ids"] if prompts
                      else [[]] * len(rows))
        for prompt, text in zip(prompt_ids, text_ids):
            tokens = prompt + text + ([tokenizer.eos_token_id] if pack else [])
            tokens = tokens if pack else tokens[:max_length]
            if len(tokens) >= 2:
                yield tokens, bytes(len(prompt)) + b"\1" * (len(tokens) - len(prompt))


TOKENS_FORMAT = 1


def _stored_tokens(tokens: Iterator[tuple[list[int], bytes]], *, folder: Path, key: dict
                   ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], str]:
    """The flat ids, learnt flags and offsets of `tokens`, memory-mapped from `folder/<key>/`:
    written there first (straight to disk, a text at a time; sealed) unless an intact copy is
    there. Returns them and the key, which stands for the tokens' digest."""
    from edgekd.errors import atomic_dir, exclusive
    from edgekd.integrity import seal, trusted
    from edgekd.training.cache import NpyAppender

    digest = hashlib.sha256(json.dumps({**key, "format": TOKENS_FORMAT}, sort_keys=True).encode()).hexdigest()
    final = folder / digest[:24]
    with exclusive(final, wait=True, what="token cache"):
        if not trusted(final, what="token cache"):
            try:
                with atomic_dir(final, overwrite=True) as staging:  # as every cache is written
                    sinks = (NpyAppender(staging / "ids.npy", dtype=np.int32, row_shape=()),
                             NpyAppender(staging / "learnt.npy", dtype=np.bool_, row_shape=()))
                    offsets = array.array("q", [0])
                    try:
                        for row_ids, row_learnt in tokens:
                            sinks[0].append(row_ids)
                            sinks[1].append(np.frombuffer(row_learnt, dtype=np.bool_))
                            offsets.append(offsets[-1] + len(row_ids))
                    finally:
                        for sink in sinks:
                            sink.close()
                    np.save(staging / "offsets.npy", np.frombuffer(offsets, dtype=np.int64))
                    seal(staging)
            except OSError as error:
                raise UserError(f"cannot write the token cache under {folder}: {error.strerror}; "
                                "set --cache-dir to a writable folder") from error
    arrays = tuple(np.load(final / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                   for name in ("ids", "learnt", "offsets"))
    return arrays, digest


def collate(examples: LMExamples, indices: Sequence[int]) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and labels (-100 on prompt and padding), right-padded."""
    width = max(len(examples.input_ids[i]) for i in indices)
    input_ids = torch.full((len(indices), width), examples.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
    labels = torch.full((len(indices), width), -100, dtype=torch.long)
    for row, index in enumerate(indices):
        tokens = torch.tensor(examples.input_ids[index])
        input_ids[row, :len(tokens)] = tokens
        attention_mask[row, :len(tokens)] = 1
        labels[row, :len(tokens)] = torch.where(torch.tensor(examples.learnt[index]), tokens, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "index": torch.tensor(list(indices))}


def batches(examples: LMExamples, *, batch_size: int, shuffle: bool, seed: int = 0
            ) -> Iterator[dict[str, torch.Tensor]]:
    order = list(range(len(examples)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        yield collate(examples, order[start:start + batch_size])


def read_texts(source, *, text_column: str = "text", prompt_column: str | None = None,
               split: str | None = None, default_split: str | None = None
               ) -> tuple[Sequence[str], Sequence[str] | None]:
    """Texts (and prompts) from any data `edgekd.data.read_table` reads (a .txt file: one text
    per non-empty line). The texts stay in the Arrow table (`edgekd.data.Texts`), read as they
    are tokenised."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from edgekd.data import Texts, _arrow_of, read_table, source_name, text_column as column_of

    table = read_table(source, split=split, default_split=default_split)
    source = source_name(source)
    if len(table) == 0:
        raise UserError(f"{source} has no texts; give at least one")
    for column in filter(None, (text_column, prompt_column)):
        if column not in table.column_names:
            raise UserError(f"{source} has no column '{column}' (columns: {', '.join(map(str, table.column_names))}); "
                            "pass --text-column/--prompt-column")
    texts = column_of(table, text_column, source)
    prompts = None
    if prompt_column:  # an Arrow column too, a missing prompt read as none
        arrow, rows = _arrow_of(table)
        prompts = Texts(pc.fill_null(pc.cast(arrow.column(prompt_column), pa.string()), ""), rows)
    return texts, prompts
