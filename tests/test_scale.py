"""What keeps work proportional to what a run uses: a bounded validation slice."""

from __future__ import annotations

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
