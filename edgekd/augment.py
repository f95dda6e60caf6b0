"""Word-substituted copies of training texts (`--augment N`): TinyBERT's task-specific data
augmentation, with the teacher's own input embeddings as the source of similar words.

A copy replaces each word of a training text, with probability RATE, by one of the CANDIDATES
words nearest to it (cosine) among the whole-word tokens of the teacher's input embeddings.
Copies carry no label: the teacher's soft labels teach the student on them, so a student sees
text near the task's own beyond the labelled rows (TinyBERT gained 1-2 points on SST-2 this
way, with a masked LM and GloVe as its word sources). Words the tokenizer splits into pieces,
numbers and punctuation are kept as they are.

Copies are made when a batch reads them, from (seed, row), never held as a list of the whole
dataset; neighbours are worked out for a batch's new words in one matrix product and kept, so
memory grows with the vocabulary, not with the data.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import numpy as np
import torch

from edgekd.data import Column, _taken

RATE = 0.4  # chance that a word of a copy is replaced
CANDIDATES = 15  # nearest words a replacement is drawn from
WORD = re.compile(r"[^\W\d_]{2,}")  # a word: two or more letters


def _lowercases(tokenizer) -> bool:
    return tokenizer(" Word", add_special_tokens=False)["input_ids"] == tokenizer(
        " word", add_special_tokens=False)["input_ids"]


def _single_tokens(tokenizer, words: list[str]) -> list[int | None]:
    """Each word's token id where the tokenizer keeps it whole after a space (as inside a
    sentence: BPE and SentencePiece mark a word's start), else None."""
    if not words:
        return []
    encoded = tokenizer([f" {word}" for word in words], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)  # an unknown word is one token too: [UNK]
    return [ids[0] if len(ids) == 1 and ids[0] not in special else None for ids in encoded]


class Neighbours:
    """Each word's CANDIDATES nearest whole-word tokens in `embeddings` (one row per token id
    of `tokenizer`), found when first asked for and kept."""

    def __init__(self, embeddings: torch.Tensor, tokenizer, *, candidates: int = CANDIDATES) -> None:
        self.tokenizer, self.candidates = tokenizer, candidates
        self.lowercase = _lowercases(tokenizer)
        vocabulary = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        spelled = [tokenizer.convert_tokens_to_string([token]).strip() for token in vocabulary]
        words = sorted({word for word in spelled if WORD.fullmatch(word)
                        and (not self.lowercase or word == word.lower())})
        ids = _single_tokens(tokenizer, words)
        kept = [(word, token) for word, token in zip(words, ids) if token is not None and token < len(embeddings)]
        self.words = [word for word, _ in kept]
        self.pool = self._unit_rows(embeddings, [token for _, token in kept])
        self.embeddings = embeddings
        self.known: dict[str, tuple[str, ...]] = {}

    @staticmethod
    def _unit_rows(embeddings: torch.Tensor, tokens: list[int]) -> torch.Tensor:
        """Those rows of `embeddings`, in float32, scaled to unit length (only they are copied)."""
        return torch.nn.functional.normalize(embeddings.detach()[tokens].float(), dim=-1)

    def key(self, word: str) -> str:
        return word.lower() if self.lowercase else word

    def learn(self, words: set[str]) -> None:
        """Work out the neighbours of those of `words` not seen yet, in one matrix product."""
        new = sorted({self.key(word) for word in words} - self.known.keys())
        if not new:
            return
        ids = _single_tokens(self.tokenizer, new)
        for word, token in zip(new, ids):
            if token is None or token >= len(self.embeddings) or not len(self.words):
                self.known[word] = ()
        found = [(word, token) for word, token in zip(new, ids) if word not in self.known]
        if not found:
            return
        queries = self._unit_rows(self.embeddings, [token for _, token in found])
        with torch.no_grad():
            nearest = (queries @ self.pool.T).topk(min(self.candidates + 1, len(self.words)), dim=-1).indices
        for (word, _), row in zip(found, nearest.tolist()):
            self.known[word] = tuple(w for w in (self.words[i] for i in row) if w != word)[:self.candidates]

    def of(self, word: str) -> tuple[str, ...]:
        return self.known.get(self.key(word), ())


def substituted(text: str, neighbours: Neighbours, generator: random.Random, *, rate: float = RATE) -> str:
    """`text` with each word replaced, with probability `rate`, by one of its neighbours (an
    initial capital kept); everything between words is kept as it was."""
    def replace(match: re.Match) -> str:
        word = match.group(0)
        choices = neighbours.of(word)
        if not choices or generator.random() >= rate:
            return word
        chosen = generator.choice(choices)
        return chosen[:1].upper() + chosen[1:] if word[:1].isupper() and neighbours.lowercase else chosen

    return WORD.sub(replace, text)


class WithCopies(Column):
    """`texts` followed by `copies` word-substituted copies of each: row n*k + i (k >= 1) is the
    k-th copy of text i, made from (seed, salt, row) whenever it is read. `rows` picks and
    orders rows (a split, a subset), as in edgekd.data.Texts."""

    def __init__(self, texts: Sequence[str], *, copies: int, neighbours: Neighbours, seed: int, salt: str = "",
                 rows: np.ndarray | None = None) -> None:
        self.texts, self.copies, self.neighbours, self.seed, self.salt = texts, copies, neighbours, seed, salt
        self.rows = rows

    def __len__(self) -> int:
        return len(self.texts) * (1 + self.copies) if self.rows is None else len(self.rows)

    def take(self, indices: Sequence[int]) -> list[str]:
        chosen = np.asarray(indices, dtype=np.int64)
        if self.rows is not None:
            chosen = self.rows[chosen]
        sources = _taken(self.texts, (chosen % len(self.texts)).tolist()) if len(chosen) else []
        self.neighbours.learn({word for text, row in zip(sources, chosen) if row >= len(self.texts)
                               for word in WORD.findall(text)})
        return [text if row < len(self.texts) else
                substituted(text, self.neighbours, random.Random(f"{self.seed}:{self.salt}:{row}"))
                for text, row in zip(sources, chosen.tolist())]

    def subset(self, indices: Sequence[int]) -> WithCopies:
        chosen = np.asarray(indices, dtype=np.int64)
        return WithCopies(self.texts, copies=self.copies, neighbours=self.neighbours, seed=self.seed,
                          salt=self.salt, rows=chosen if self.rows is None else self.rows[chosen])


def augmented(dataset, *, copies: int, embeddings: torch.Tensor, tokenizer, seed: int):
    """`dataset` (an edgekd.data.TextDataset) with `copies` unlabelled word-substituted copies of
    each row after its own rows (text pairs substituted too)."""
    import dataclasses

    neighbours = Neighbours(embeddings, tokenizer)
    pairs = dataset.text_pairs
    return dataclasses.replace(
        dataset, texts=WithCopies(dataset.texts, copies=copies, neighbours=neighbours, seed=seed),
        labels=list(dataset.labels) + [None] * (len(dataset) * copies),
        text_pairs=None if pairs is None else WithCopies(pairs, copies=copies, neighbours=neighbours, seed=seed,
                                                         salt="pair"))
