"""What keeps work proportional to what a run uses: data read as Arrow and tokenised a batch at a
time, a bounded validation slice, a teacher run only on the rows used, caches written as they go."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_rows, run_cli, write_jsonl


def test_the_held_out_slice_is_capped_by_validation_rows():
    from edgekd.config import DistillConfig
    from edgekd.data import TextDataset
    from edgekd.tasks.shared import held_out

    rows = make_rows(1000)
    train = TextDataset(texts=[r["text"] for r in rows], labels=[0] * len(rows), label_names=["a"])
    options = {"validation_data": None, "validation_split": None}
    validation, rest = held_out(train, options=options, config=DistillConfig(validation_rows=25), read=None)
    assert len(validation) == 25 and len(rest) == 975  # not the 100 rows a 10% slice would be
    validation, rest = held_out(train, options=options, config=DistillConfig(), read=None)
    assert len(validation) == 100 and len(rest) == 900  # below the default cap: the fraction as before


def test_validation_rows_reaches_the_command_line_and_is_checked(teacher_dir, tmp_path):
    data = write_jsonl(make_rows(40), tmp_path / "train.jsonl")
    result = run_cli("distill", "--teacher", teacher_dir, "--data", data, "--out", tmp_path / "s",
                     "--student-layers", "1", "--validation-rows", "0", "--quiet")
    assert result.exit_code != 0 and "--validation-rows must be at least 1, got 0" in result.output


def test_training_records_its_rate_in_metrics_and_the_final_line(teacher_dir, tmp_path):
    import json

    import edgekd
    from lm_tiny import make_texts, save_llama

    lines = []
    edgekd.distill(teacher=teacher_dir, data=make_rows(40), out=tmp_path / "text", student_layers="1", epochs=1,
                   quiet=True, log=lines.append, cache_dir=tmp_path / "cache")
    steps = [json.loads(line) for line in (tmp_path / "text" / "metrics.jsonl").read_text().splitlines()]
    steps = [record for record in steps if "loss" in record]
    assert steps and all(record["samples_per_second"] > 0 for record in steps)
    assert "samples/s" in lines[-1]

    lm = save_llama(tmp_path / "lm", layers=2)
    lines.clear()
    edgekd.distill(teacher=lm, data=[{"text": text} for text in make_texts(24)], out=tmp_path / "slm",
                   student_layers="1", max_steps=3, top_k=8, allow_poor_student=True, quiet=True,
                   log=lines.append, cache_dir=tmp_path / "cache")
    steps = [json.loads(line) for line in (tmp_path / "slm" / "metrics.jsonl").read_text().splitlines()]
    steps = [record for record in steps if "loss" in record]
    assert len(steps) == 3 and all(record["tokens_per_second"] > record["samples_per_second"] > 0 for record in steps)
    assert " tokens/s, " in lines[-1]


def test_max_steps_runs_the_teacher_only_on_the_rows_its_steps_use(teacher_dir, tmp_path):
    import json

    import edgekd
    from lm_tiny import make_texts, save_llama

    edgekd.distill(teacher=teacher_dir, data=make_rows(400), out=tmp_path / "text", student_layers="1", max_steps=2,
                   batch_size=4, validation_rows=20, quiet=True, log=None, cache_dir=tmp_path / "cache")
    built = sorted(json.loads(meta.read_text())["rows"] for meta in (tmp_path / "cache").rglob("meta.json"))
    assert built == [8, 20]  # 2 steps of 4 rows, and the capped validation slice; not the 380 training rows

    lm = save_llama(tmp_path / "lm", layers=2)
    result = edgekd.distill(teacher=lm, data=[{"text": text} for text in make_texts(100)], out=tmp_path / "slm",
                            student_layers="1", max_steps=3, batch_size=4, top_k=8, allow_poor_student=True,
                            quiet=True, log=None, cache_dir=tmp_path / "lm-cache")
    assert result.steps == 3
    metas = [json.loads(meta.read_text()) for meta in (tmp_path / "lm-cache").rglob("meta.json")]
    assert [meta["rows"] for meta in metas] == [12]  # 3 steps of 4 texts, not 100


def test_a_max_steps_run_counts_its_progress_in_the_rows_it_trains_on(teacher_dir, tmp_path):
    import re

    data = write_jsonl(make_rows(400), tmp_path / "train.jsonl")
    result = run_cli("distill", "--teacher", teacher_dir, "--data", data, "--out", tmp_path / "s", "--student-layers",
                     "1", "--max-steps", "2", "--batch-size", "4", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    epoch = [line for line in result.output.splitlines() if re.match(r"epoch 1/\d+: ", line)]
    assert epoch and epoch[-1].startswith(f"{epoch[-1].split(':')[0]}: 8/8 (100%)"), epoch  # not 8/360


def test_the_top_k_cache_streams_its_rows_to_disk_and_keeps_no_part_files(tmp_path):
    import numpy as np

    from edgekd.training.cache import NpyAppender

    rows = np.arange(40, dtype=np.float16).reshape(10, 4)
    values = NpyAppender(tmp_path / "values.npy", dtype=np.float16, row_shape=(4,))
    values.append(rows[:6])  # written batch by batch
    values.append(rows[6:].astype(np.float32))
    values.close()
    assert np.array_equal(np.load(tmp_path / "values.npy"), rows) and sorted(p.name for p in tmp_path.iterdir()) == ["values.npy"]
    assert np.array_equal(np.load(tmp_path / "values.npy", mmap_mode="r"), rows)
    none = NpyAppender(tmp_path / "none.npy", dtype=np.uint16, row_shape=(4,))
    none.close()
    assert np.load(tmp_path / "none.npy").shape == (0, 4)
    wide = NpyAppender(tmp_path / "wide.npy", dtype=np.int32, row_shape=(3, 2))
    wide.append(np.ones((2**20, 3, 2)))  # a long shape still fits the header
    wide.close()
    assert np.load(tmp_path / "wide.npy", mmap_mode="r").shape == (2**20, 3, 2)
    with pytest.raises(ValueError, match="rows of shape"):
        NpyAppender(tmp_path / "x.npy", dtype=np.float16, row_shape=(4,)).append(np.zeros((1, 5)))


def test_a_streamed_top_k_cache_holds_the_teachers_top_k(tmp_path):
    import numpy as np
    import torch

    from edgekd.lm.data import encode_texts
    from edgekd.training.cache import open_or_build_top_k, top_k_rows
    from lm_tiny import make_llama, make_lm_tokenizer, make_texts

    teacher, tokenizer = make_llama(layers=2), make_lm_tokenizer()
    examples = encode_texts(make_texts(20), tokenizer, max_length=32)
    cache = open_or_build_top_k(teacher, examples, top_k=4, temperature=1.0, vocabulary=52, root=tmp_path,
                                batch_size=3, show_progress=False)
    assert not list(tmp_path.rglob("*.part"))
    batch = {name: tensor for name, tensor in examples.batch(list(range(20))).items()}
    expected = list(top_k_rows(teacher, batch, top_k=4, temperature=1.0, vocabulary=52))
    ids, log_probs = cache.gather(list(range(20)), width=max(len(row) for row in examples.input_ids))
    for row, (want_ids, want_values) in enumerate(expected):
        assert np.array_equal(ids[row, :len(want_ids)].numpy(), want_ids)
        torch.testing.assert_close(log_probs[row, :len(want_ids)], torch.from_numpy(want_values.astype(np.float16)).float(),
                                   atol=2e-3, rtol=0)


def _write_every_format(rows: list[dict], folder):
    """The same rows as CSV, TSV, JSONL, Parquet and a saved dataset."""
    import csv

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as parquet

    paths = {}
    for suffix, delimiter in ((".csv", ","), (".tsv", "\t")):
        paths[suffix] = folder / f"rows{suffix}"
        with paths[suffix].open("w", newline="") as handle:
            writer = csv.DictWriter(handle, ["text", "label"], delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)
    paths[".jsonl"] = write_jsonl(rows, folder / "rows.jsonl")
    paths[".parquet"] = folder / "rows.parquet"
    parquet.write_table(pa.Table.from_pylist(rows), paths[".parquet"])
    datasets.Dataset.from_list(rows).save_to_disk(str(folder / "saved"))
    paths["saved"] = folder / "saved"
    return paths


def test_every_reader_gives_a_memory_mapped_arrow_dataset_and_texts_stay_in_it(tmp_path, monkeypatch):
    import datasets

    from edgekd.data import Columns, Texts, load_file, read_table

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    rows = make_rows(30)
    label2id = {name: i for i, name in enumerate(sorted({row["label"] for row in rows}))}
    (tmp_path / "rows.txt").write_text("".join(row["text"] + "\n\n" for row in rows))
    for name, path in {**_write_every_format(rows, tmp_path), ".txt": tmp_path / "rows.txt"}.items():
        table = read_table(path)
        assert isinstance(table, datasets.Dataset) and len(table) == 30, name
        assert table.cache_files and all(Path(f["filename"]).exists() for f in table.cache_files), name  # on disk, mapped
        assert table["text"][:30] == [row["text"] for row in rows], name
        if name == ".txt":
            continue
        dataset = load_file(path, columns=Columns(), label2id=label2id)
        assert isinstance(dataset.texts, Texts), name  # not a Python list of every text
        assert list(dataset.texts) == [row["text"] for row in rows], name
        assert dataset.labels == [label2id[row["label"]] for row in rows], name
        subset = dataset.subset([29, 0, 7])
        assert isinstance(subset.texts, Texts) and subset.texts[:] == [rows[i]["text"] for i in (29, 0, 7)]


def test_a_file_is_converted_once_keyed_by_its_bytes_and_a_damaged_conversion_is_rebuilt(tmp_path, monkeypatch):
    from edgekd.data import read_table

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    first = write_jsonl(make_rows(20), tmp_path / "a.jsonl")
    (tmp_path / "copy").mkdir()
    copy = tmp_path / "copy" / "a.jsonl"
    copy.write_bytes(first.read_bytes())
    folders = lambda: sorted(p for p in (tmp_path / "cache" / "data").iterdir())  # noqa: E731
    read_table(first)
    arrow = folders()[0] / "data.arrow"
    stamp = arrow.stat().st_mtime_ns
    read_table(copy)  # the same bytes elsewhere: the same conversion, not rebuilt
    assert len(folders()) == 1 and arrow.stat().st_mtime_ns == stamp
    write_jsonl(make_rows(20, seed=1), first)  # new bytes: a new conversion
    assert read_table(first)["text"][0] == make_rows(20, seed=1)[0]["text"] and len(folders()) == 2
    with arrow.open("r+b") as handle:  # damage the first
        handle.seek(arrow.stat().st_size - 40)
        handle.write(b"\0" * 8)
    assert read_table(copy)["text"][:20] == [row["text"] for row in make_rows(20)]  # rebuilt, not read
    assert not [p for p in (tmp_path / "cache" / "data").iterdir() if p.name.startswith(".")]


def test_jsonl_chunks_with_new_keys_and_mixed_types_read_as_one_table(tmp_path, monkeypatch):
    import edgekd.data as data
    from edgekd.data import Columns, load_file, read_table

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "CHUNK_ROWS", 4)
    rows = [{"text": f"row {i}", "label": i % 2} for i in range(10)]
    rows[3]["label"] = "1"  # a class index as text beside numbers
    rows[9]["source"] = {"site": "x"}  # a key that first appears in the third chunk
    table = read_table(write_jsonl(rows, tmp_path / "mixed.jsonl"))
    assert table.column_names == ["text", "label", "source"] and table["source"][9] == '{"site": "x"}'
    dataset = load_file(tmp_path / "mixed.jsonl", columns=Columns(), label2id={"even": 0, "odd": 1})
    assert dataset.labels == [i % 2 for i in range(10)]


def test_training_tokenises_only_the_rows_it_uses(teacher_dir, tmp_path, monkeypatch):
    import edgekd
    import edgekd.data as data

    tokenised = []
    encode = data.encode
    monkeypatch.setattr(data, "encode", lambda dataset, *a, **k: tokenised.extend(dataset.texts) or encode(dataset, *a, **k))
    rows = make_rows(400)
    edgekd.distill(teacher=teacher_dir, data=rows, out=tmp_path / "s", student_layers="1", max_steps=2, batch_size=4,
                   validation_rows=20, quiet=True, log=None, cache_dir=tmp_path / "cache")
    train_texts = {row["text"] for row in rows}
    assert 0 < len(set(tokenised)) <= 8 + 2 and set(tokenised) <= train_texts  # 2 steps of 4 rows (and the 2 rows
    # of the first-batch check), not 380


def test_csv_read_by_arrow_holds_what_the_csv_module_reads_and_odd_files_still_read(tmp_path, monkeypatch):
    import csv

    from edgekd.data import read_table

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    rows = [{"text": 'a "quoted", comma', "label": "x"}, {"text": "two\nlines", "label": ""},
            {"text": "NA", "label": "null"}, {"text": "naïve café ☕", "label": "1"}]
    for suffix, delimiter in ((".csv", ","), (".tsv", "\t")):
        path = tmp_path / f"odd{suffix}"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, ["text", "label"], delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)
        with path.open(newline="", encoding="utf-8") as handle:
            expected = list(csv.DictReader(handle, delimiter=delimiter))
        assert read_table(path).to_list() == expected, suffix  # empty stays "", "NA" and "null" stay text
    ragged = tmp_path / "ragged.csv"  # a short row: the csv module's reading (a missing value is None)
    ragged.write_text("\ufefftext,label\nfirst,a\nsecond\n", encoding="utf-8")
    assert read_table(ragged).to_list() == [{"text": "first", "label": "a"}, {"text": "second", "label": None}]


def test_a_converted_file_records_its_first_blank_text_and_reading_it_again_trusts_the_record(tmp_path, monkeypatch):
    import edgekd.data as data
    from edgekd.data import Columns, load_file
    from edgekd.errors import UserError

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "CHUNK_ROWS", 3)
    rows = make_rows(10)
    rows[7]["text"] = "   "
    path = write_jsonl(rows, tmp_path / "blank.jsonl")
    label2id = {name: i for i, name in enumerate(sorted({row["label"] for row in rows}))}
    for _ in range(2):  # converted, then mapped again: the same one line
        with pytest.raises(UserError, match=r"blank.jsonl, row 8: column 'text' is empty"):
            load_file(path, columns=Columns(), label2id=label2id)
    record = next((tmp_path / "cache" / "data").glob(f"*/{data.BLANKS}"))
    assert json.loads(record.read_text()) == {"text": 7, "label": None}
    scanned = []
    monkeypatch.setattr(data, "_first_blank", lambda column: scanned.append(column) or None)
    with pytest.raises(UserError, match="row 8"):
        load_file(path, columns=Columns(), label2id=label2id)
    assert not scanned  # the text column was not read to find it


@pytest.mark.parametrize("pack", [False, True])
def test_lm_tokens_stored_on_disk_equal_those_in_memory_and_are_reused(tmp_path, pack, capsys):
    import numpy as np

    from edgekd.lm.data import encode_texts
    from lm_tiny import make_lm_tokenizer, make_texts

    tokenizer = make_lm_tokenizer()
    texts = make_texts(30) + ["", "w1"]  # too short to predict anything: dropped either way
    prompts = ["w2 w3" if i % 3 else "" for i in range(len(texts))]
    options = dict(max_length=12, prompts=prompts, pack=pack)
    in_memory = encode_texts(texts, tokenizer, **options)
    stored = encode_texts(texts, tokenizer, store=tmp_path, **options)
    assert isinstance(stored.input_ids.flat, np.memmap) and isinstance(stored.learnt.flat, np.memmap)
    assert list(stored.input_ids) == list(in_memory.input_ids) and list(stored.learnt) == list(in_memory.learnt)
    assert stored.predicted_tokens == in_memory.predicted_tokens
    # reused: the tokenizer is not called again; another --max-length is another store
    calls = []
    original = type(tokenizer).__call__
    type(tokenizer).__call__ = lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    try:
        again = encode_texts(texts, tokenizer, store=tmp_path, **options)
    finally:
        type(tokenizer).__call__ = original
    assert not calls and again.digest() == stored.digest()
    assert encode_texts(texts, tokenizer, store=tmp_path, **{**options, "max_length": 10}).digest() != stored.digest()
    assert stored.subset([0, 1]).digest() == in_memory.subset([0, 1]).digest()  # a subset hashes its tokens
    # a damaged store is said so in one line and tokenised again
    folder = tmp_path / stored.digest()[:24]
    ids = np.load(folder / "ids.npy")
    np.save(folder / "ids.npy", ids[::-1].copy())
    capsys.readouterr()
    rebuilt = encode_texts(texts, tokenizer, store=tmp_path, **options)
    assert "ids.npy does not match its checksum); rebuilding" in capsys.readouterr().err
    assert list(rebuilt.input_ids) == list(in_memory.input_ids)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_lm_texts_and_prompts_stay_in_arrow(tmp_path, monkeypatch):
    from edgekd.data import Texts
    from edgekd.lm.data import read_texts

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    rows = [{"text": "w1 w2 w3", "prompt": "q1"}, {"text": "w4 w5"}, {"text": "w6 w7", "prompt": 42}]
    texts, prompts = read_texts(write_jsonl(rows, tmp_path / "lm.jsonl"), prompt_column="prompt")
    assert isinstance(texts, Texts) and isinstance(prompts, Texts)
    assert list(texts) == ["w1 w2 w3", "w4 w5", "w6 w7"] and list(prompts) == ["q1", "", "42"]  # none: no prompt
