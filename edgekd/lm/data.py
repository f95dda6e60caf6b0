"""Text for language modelling: tokenise, mark which tokens are learnt, batch.

Each text becomes one example, truncated to `max_length` tokens; packed (`pack`), the texts
are instead joined end to end, each followed by the end-of-text token, and cut into full
sequences of `max_length` tokens, so no token of a long text is dropped and no step is spent
on padding (a sequence may span two texts, as in the pretraining the teachers had). An
optional prompt is prepended and masked out of the loss (labels -100), as is padding;
examples are padded on the right to the longest in their batch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from edgekd.errors import UserError


@dataclass(frozen=True)
class LMExamples:
    """Token ids per example and, per token, whether it is learnt (not prompt)."""

    input_ids: list[list[int]]
    learnt: list[list[bool]]
    pad_token_id: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, indices: Sequence[int]) -> LMExamples:
        return LMExamples(input_ids=[self.input_ids[i] for i in indices], learnt=[self.learnt[i] for i in indices],
                          pad_token_id=self.pad_token_id)

    @property
    def predicted_tokens(self) -> int:
        """Next-token predictions that count: learnt tokens after the first position."""
        return sum(sum(flags[1:]) for flags in self.learnt)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The examples at `indices`, padded into one batch (`collate`)."""
        return collate(self, indices)


def encode_texts(texts: Sequence[str], tokenizer, *, max_length: int,
                 prompts: Sequence[str] | None = None, pack: bool = False) -> LMExamples:
    """Tokenise; texts shorter than two tokens are dropped (nothing to predict). `pack`: every
    token kept, in full sequences of `max_length` (the last one may be shorter)."""
    if prompts is not None and len(prompts) != len(texts):
        raise UserError(f"{len(prompts)} prompts for {len(texts)} texts; give one prompt per text")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise UserError("the tokenizer has neither a pad nor an end-of-text token; add one")
    if pack and tokenizer.eos_token_id is None:
        raise UserError("--pack joins texts with the end-of-text token and the tokenizer has none; "
                        "leave --pack out")
    ids, learnt = [], []
    for index, text in enumerate(texts):
        prompt_ids = tokenizer(prompts[index], add_special_tokens=False)["input_ids"] if prompts else []
        text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        tokens = prompt_ids + text_ids + ([tokenizer.eos_token_id] if pack else [])
        tokens = tokens if pack else tokens[:max_length]
        if len(tokens) < 2:
            continue
        ids.append(tokens)
        learnt.append([position >= len(prompt_ids) for position in range(len(tokens))])
    if pack:
        ids, learnt = _packed(ids, max_length), _packed(learnt, max_length)
    if not ids:
        raise UserError("no text has two or more tokens; give longer training texts")
    return LMExamples(input_ids=ids, learnt=learnt, pad_token_id=int(pad))


def _packed(rows: list[list], length: int) -> list[list]:
    """The rows joined end to end and cut into pieces of `length`; a last piece of one item is
    dropped (nothing to predict)."""
    joined = [item for row in rows for item in row]
    pieces = [joined[start:start + length] for start in range(0, len(joined), length)]
    return [piece for piece in pieces if len(piece) >= 2]


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
               ) -> tuple[list[str], list[str] | None]:
    """Texts (and prompts) from any data `edgekd.data.read_table` reads (a .txt file: one text
    per non-empty line)."""
    from edgekd.data import read_table, source_name, text_column as column_of

    table = read_table(source, split=split, default_split=default_split)
    source = source_name(source)
    if len(table) == 0:
        raise UserError(f"{source} has no texts; give at least one")
    for column in filter(None, (text_column, prompt_column)):
        if column not in table.column_names:
            raise UserError(f"{source} has no column '{column}' (columns: {', '.join(map(str, table.column_names))}); "
                            "pass --text-column/--prompt-column")
    texts = list(column_of(table, text_column, source))  # every example is tokenised before training
    prompts = [str(value or "") for value in table[prompt_column]] if prompt_column else None
    return texts, prompts
