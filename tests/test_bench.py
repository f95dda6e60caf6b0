import json

import numpy as np
import pytest

from edgekd.bench.accuracy import accuracy, agreement, macro_f1, mean_kl
from edgekd.bench.latency import measure_interleaved, summarize
from edgekd.bench.report import markdown, write_report
from edgekd.bench.stage import bench
from edgekd.data import Columns, load_file
from edgekd.errors import UserError
from edgekd.export.stage import export
from edgekd.targets import load_target


def test_metrics_by_hand():
    predictions, labels = np.array([0, 1, 1, 2]), np.array([0, 1, 2, -1])
    assert accuracy(predictions, labels) == pytest.approx(2 / 3)
    # class 0: F1 1; class 1: P 1/2 R 1 -> 2/3; class 2: 0  => mean 5/9
    assert macro_f1(predictions, labels, num_labels=3) == pytest.approx(5 / 9)
    assert agreement(predictions, np.array([0, 1, 0, 0])) == 0.5
    logits = np.array([[1.0, 2.0, 0.5]])
    assert mean_kl(logits, logits) == pytest.approx(0.0, abs=1e-12)


def test_latency_is_measured_interleaved():
    calls = []
    runners = {name: (lambda name=name: calls.append(name)) for name in "ABC"}
    seconds = measure_interleaved(runners, repeats=3, warmup=1)
    assert "".join(calls) == "ABC" * 4
    assert all(len(v) == 3 for v in seconds.values())
    summary = summarize(np.array([0.001, 0.002, 0.003, 0.004]))
    assert summary["p50_ms"] == pytest.approx(2.5) and summary["iqr_ms"] == pytest.approx(1.5)


def test_report_schema_rows_for_teacher_student_and_every_artifact(teacher_dir, student_dir, test_file, tmp_path):
    out = tmp_path / "artifacts"
    export(student_dir, targets=[load_target("onnx-fp32"), load_target("onnx-int8")], out=out)
    from edgekd.models import load_classifier

    teacher = load_classifier(teacher_dir)
    data = load_file(test_file, columns=Columns(), label2id=teacher[0].config.label2id)
    report = bench(teacher=teacher_dir, student=student_dir, artifacts=out, data=data,
                   max_length=32, sequence_length=32, repeats=5, show_progress=False)
    assert report["schema_version"] == 1
    assert [r["name"] for r in report["rows"]] == ["teacher", "student", "student/onnx-fp32",
                                                   "student/onnx-int8"]
    for row in report["rows"]:
        assert {"accuracy", "macro_f1", "agreement", "kl_to_teacher"} <= set(row["quality"])
        assert row["latency"]["p50_ms"] > 0 and row["size_bytes"] > 0 and row["params"] > 0
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["teacher"]["speedup"] == 1.0
    # the fp32 ONNX export computes the same function as the PyTorch student
    assert rows["student/onnx-fp32"]["quality"]["accuracy"] == rows["student"]["quality"]["accuracy"]
    write_report(report, tmp_path / "report")
    assert json.loads((tmp_path / "report" / "report.json").read_text())["rows"][0]["name"] == "teacher"
    assert "| teacher |" in markdown(report)


def test_bench_rejects_folders_without_artifacts(teacher_dir, test_file, tmp_path):
    from edgekd.models import load_classifier

    teacher = load_classifier(teacher_dir)
    data = load_file(test_file, columns=Columns(), label2id=teacher[0].config.label2id)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no exported artifact"):
        bench(teacher=teacher_dir, student=None, artifacts=tmp_path / "empty", data=data,
              show_progress=False, teacher_model=teacher)
    with pytest.raises(UserError, match="beyond the model's limit"):
        bench(teacher=teacher_dir, student=None, artifacts=None, data=data, sequence_length=4096,
              show_progress=False, teacher_model=teacher)
