"""Hugging Face datasets as --data: folders written by save_to_disk (a Dataset or a DatasetDict
of splits, ClassLabel columns by name) for every task and command; no downloads."""

from __future__ import annotations

import json

import pytest

from conftest import LABELS, assert_clean_error, make_rows, run_cli as run
from edgekd.data import Columns, load_file, read_rows
from edgekd.errors import UserError
from edgekd.lm.data import read_texts

datasets = pytest.importorskip("datasets")


def _classification(rows: list[dict]):
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=LABELS)})
    return datasets.Dataset.from_list([{"text": r["text"], "label": LABELS.index(r["label"])} for r in rows],
                                      features=features)


@pytest.fixture
def saved(tmp_path):
    """A DatasetDict with train/validation/test splits and one plain Dataset, saved to disk."""
    splits = datasets.DatasetDict({"train": _classification(make_rows(40, seed=1)),
                                   "validation": _classification(make_rows(12, seed=3)),
                                   "test": _classification(make_rows(16, seed=2))})
    splits.save_to_disk(str(tmp_path / "splits"))
    _classification(make_rows(10, seed=4)).save_to_disk(str(tmp_path / "single"))
    return tmp_path


def test_rows_come_from_the_chosen_split_with_class_names(saved):
    label2id = {name: i for i, name in enumerate(LABELS)}
    train = load_file(saved / "splits", columns=Columns(), label2id=label2id, default_split="train")
    test = load_file(saved / "splits", columns=Columns(), label2id=label2id, split="test")
    expected = make_rows(16, seed=2)
    assert len(train) == 40 and test.texts == [r["text"] for r in expected]
    assert [test.label_names[i] for i in test.labels] == [r["label"] for r in expected]  # ClassLabel by name
    assert len(read_rows(saved / "single")) == 10


def test_split_errors_are_one_line(saved):
    with pytest.raises(UserError, match="has splits train, validation, test; pass --split"):
        read_rows(saved / "splits")
    with pytest.raises(UserError, match="split 'dev' is not in it"):
        read_rows(saved / "splits", split="dev")
    with pytest.raises(UserError, match="has no splits; drop --split test"):
        read_rows(saved / "single", split="test")
    (saved / "plain-folder").mkdir()
    with pytest.raises(UserError, match="is a folder, not a data file"):
        read_rows(saved / "plain-folder")


def test_distill_export_bench_read_saved_datasets(saved, teacher_dir, tmp_path):
    student, export = tmp_path / "student", tmp_path / "export"
    result = run("distill", "--teacher", teacher_dir, "--data", saved / "splits", "--validation-data",
                 saved / "splits", "--out", student, "--epochs", "1", "--max-length", "32", "--quiet",
                 "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert "validation accuracy" in result.output
    result = run("export", student, "--target", "onnx-int8", "--data", saved / "splits", "--out", export)
    assert result.exit_code == 0, result.output
    accuracy = json.loads((export / "onnx-int8" / "edgekd.json").read_text())["accuracy"]
    assert accuracy["rows"] == 12  # the validation split by default
    result = run("bench", "--teacher", teacher_dir, "--student", student, "--data", saved / "splits",
                 "--split", "test", "--repeats", "2", "--no-memory", "--no-roofline", "--no-plot",
                 "--sequence-length", "16", "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "report" / "report.json").read_text())["data"]["rows"] == 16
    result = run("distill", "--teacher", teacher_dir, "--data", saved / "splits", "--split", "dev",
                 "--out", tmp_path / "s2")
    assert_clean_error(result, "split 'dev' is not in it")


def test_causal_lm_texts_from_a_saved_dataset(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b c", "d e f"]}),
                          "test": datasets.Dataset.from_dict({"text": ["g h"]})}).save_to_disk(str(tmp_path / "d"))
    assert read_texts(tmp_path / "d", default_split="train") == (["a b c", "d e f"], None)
    assert read_texts(tmp_path / "d", split="test")[0] == ["g h"]
    (tmp_path / "t.txt").write_text("one line\n\nanother line\n")
    assert read_texts(tmp_path / "t.txt")[0] == ["one line", "another line"]


def test_a_hub_id_that_cannot_be_reached_is_one_line(teacher_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network in tests: the hub answers "offline"
    result = run("distill", "--teacher", teacher_dir, "--data", "someone/some-dataset:en", "--out", tmp_path / "s")
    assert_clean_error(result, "cannot load dataset 'someone/some-dataset:en' from the Hugging Face hub")
    assert not (tmp_path / "s").exists()
