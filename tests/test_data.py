import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edgekd.data import Columns, batches, demo_corpus, demo_splits, encode, load_file, split
from edgekd.errors import UserError

LABEL2ID = {"negative": 0, "neutral": 1, "positive": 2}
ROWS = [{"text": "good table", "label": "positive"}, {"text": "bad door", "label": "negative"},
        {"text": "a chair", "label": "1"}, {"text": "unlabelled text", "label": ""}]


def _write(tmp_path, fmt, rows=ROWS):
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_load_file_maps_names_indices_and_empty_labels(tmp_path, fmt):
    dataset = load_file(_write(tmp_path, fmt), columns=Columns(), label2id=LABEL2ID)
    assert dataset.texts[0] == "good table"
    assert dataset.labels == [2, 0, 1, None]
    assert dataset.label_names == ["negative", "neutral", "positive"]


def test_missing_column_names_the_column_and_the_option(tmp_path):
    with pytest.raises(UserError, match=r"no column 'sentence'.*--text-column"):
        load_file(_write(tmp_path, "jsonl"), columns=Columns(text="sentence"), label2id=LABEL2ID)


def test_unknown_label_names_row_and_known_labels(tmp_path):
    rows = ROWS + [{"text": "x", "label": "angry"}]
    with pytest.raises(UserError, match=r"row 5: label 'angry' is not one of .*negative, neutral, positive"):
        load_file(_write(tmp_path, "jsonl", rows), columns=Columns(), label2id=LABEL2ID)


@pytest.mark.parametrize("content, message", [
    ("", "has no rows"),
    ('{"text": "a"\n', "not valid JSON"),
    ('[1, 2]\n', "expected a JSON object"),
])
def test_bad_jsonl(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_file(path, columns=Columns(), label2id=LABEL2ID)


def test_non_utf8_and_missing_and_unknown_format(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9,positive\n".encode("latin-1"))
    with pytest.raises(UserError, match="not valid UTF-8"):
        load_file(latin, columns=Columns(), label2id=LABEL2ID)
    with pytest.raises(UserError, match="does not exist"):
        load_file(tmp_path / "nope.csv", columns=Columns(), label2id=LABEL2ID)
    other = tmp_path / "data.xlsx"
    other.write_text("x")
    with pytest.raises(UserError, match="unknown data format"):
        load_file(other, columns=Columns(), label2id=LABEL2ID)


def test_split_is_seeded_disjoint_and_complete(tmp_path):
    dataset = load_file(_write(tmp_path, "jsonl", ROWS * 5), columns=Columns(), label2id=LABEL2ID)
    a, b = split(dataset, fractions=[0.25, 1.0], seed=3)
    again, _ = split(dataset, fractions=[0.25, 1.0], seed=3)
    assert len(a) == 5 and len(b) == 15 and a.texts == again.texts


def test_text_pairs_reach_the_tokenizer_with_segment_ids(tmp_path, tokenizer):
    rows = [{"premise": "good table", "hypothesis": "bad door", "label": "neutral"}]
    dataset = load_file(_write(tmp_path, "jsonl", rows),
                        columns=Columns(text="premise", text_pair="hypothesis"), label2id=LABEL2ID)
    batch = next(batches(encode(dataset, tokenizer, max_length=32), batch_size=1, pad_token_id=0))
    assert batch["token_type_ids"].sum() == 3  # "bad door [SEP]" is segment 1


def test_batches_pad_to_longest_row_and_mark_missing_labels(tmp_path, tokenizer):
    dataset = load_file(_write(tmp_path, "jsonl"), columns=Columns(), label2id=LABEL2ID)
    batch = next(batches(encode(dataset, tokenizer, max_length=32), batch_size=4, pad_token_id=0))
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[1] == lengths.max()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
    assert batch["labels"].tolist() == [2, 0, 1, -100]


def test_demo_corpus_is_deduplicated_sorted_and_split_is_fixed():
    corpus = demo_corpus()
    assert corpus.label_names == sorted(corpus.label_names) and len(corpus.label_names) == 5
    assert len(set(corpus.texts)) == len(corpus) and 2000 < len(corpus) < 2225
    first, second = demo_splits(seed=0), demo_splits(seed=0)
    assert first["test"].texts == second["test"].texts and len(first["test"]) == 500
    assert not set(first["test"].texts) & set(first["train"].texts)
    assert not set(first["validation"].texts) & set(first["train"].texts)
