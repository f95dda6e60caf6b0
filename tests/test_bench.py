"""The bench stage on tiny in-process models: metrics, interleaving, report schema, runtimes
(.onnx, .ort), and one clear error for each bad input."""

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekd.metrics import accuracy, agreement, macro_f1, mean_kl
from edgekd.benchmarking.latency import measure_interleaved, noisy, summarize, throughput
from edgekd.benchmarking.report import SCHEMA_VERSION, markdown, write_report
from edgekd.benchmarking.classifier import bench
from edgekd.data import Columns, TextDataset, load_file
from edgekd.errors import UserError
from edgekd.exporting.stage import export
from edgekd.models import load_classifier
from edgekd.targets import load_target

SCHEMA_DOC = Path(__file__).resolve().parent.parent / "docs" / "report-schema.md"
FAST = dict(max_length=32, sequence_length=32, repeats=3, warmup=1, throughput_batch_size=4,
            measure_memory=False, show_progress=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, student_dir):
    """onnx-fp32 and onnx-int8 exports of the tiny student, made once for this module."""
    out = tmp_path_factory.mktemp("bench") / "artifacts"
    export(student_dir, targets=[load_target("onnx-fp32"), load_target("onnx-int8")], out=out)
    return out


@pytest.fixture
def teacher(teacher_dir):
    return load_classifier(teacher_dir)


@pytest.fixture
def data(test_file, teacher):
    return load_file(test_file, columns=Columns(), label2id=teacher[0].config.label2id)


def test_metrics_by_hand():
    predictions, labels = np.array([0, 1, 1, 2]), np.array([0, 1, 2, -1])
    assert accuracy(predictions, labels) == pytest.approx(2 / 3)
    # class 0: F1 1; class 1: P 1/2 R 1 -> 2/3; class 2: 0  => mean 5/9
    assert macro_f1(predictions, labels, num_labels=3) == pytest.approx(5 / 9)
    assert agreement(predictions, np.array([0, 1, 0, 0])) == 0.5
    logits = np.array([[1.0, 2.0, 0.5]])
    assert mean_kl(logits, logits) == pytest.approx(0.0, abs=1e-12)
    # KL(p || q) for p = (1/2, 1/2), q = (1/4, 3/4): 1/2 ln 2 + 1/2 ln(2/3)
    assert mean_kl(np.log([[0.25, 0.75]]), np.log([[0.5, 0.5]])) == pytest.approx(
        0.5 * np.log(2) + 0.5 * np.log(2 / 3))


def test_latency_is_measured_interleaved():
    calls = []
    runners = {name: (lambda name=name: calls.append(name)) for name in "ABC"}
    seconds = measure_interleaved(runners, repeats=3, warmup=1)
    assert "".join(calls) == "ABC" * 4
    assert all(len(v) == 3 for v in seconds.values())


def test_the_paired_interval_is_the_row_bootstrap_drawn_from_its_multinomial():
    from edgekd.metrics import paired_interval

    rng = np.random.default_rng(3)
    first = (rng.random(400) < 0.8).astype(int)
    second = np.where(rng.random(400) < 0.9, first, 1 - first)  # agrees on about 90% of rows
    low, high = paired_interval(first, second, samples=4000, seed=1)
    # the textbook bootstrap, resampling rows, gives the same interval within its own noise
    picks = np.random.default_rng(2).integers(0, 400, size=(4000, 400))
    resampled = np.sort(100 * (first[picks].mean(1) - second[picks].mean(1)))
    assert low == pytest.approx(resampled[100], abs=0.6) and high == pytest.approx(resampled[3900], abs=0.6)
    assert low < 100 * (first.mean() - second.mean()) < high
    # the normal approximation of the paired difference: half-width 1.96 standard errors
    difference = first - second
    half = 1.96 * 100 * difference.std() / np.sqrt(400)
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)
    assert paired_interval(first, first) == [0.0, 0.0]
    assert paired_interval([1, 1, 1], [0, 0, 0]) == [100.0, 100.0]
    with pytest.raises(ValueError):
        paired_interval([1, 0], [1])


def test_latency_summary_percentiles_spread_and_throughput():
    summary = summarize(np.array([0.001, 0.002, 0.003, 0.004]))
    assert summary["p50_ms"] == pytest.approx(2.5) and summary["iqr_ms"] == pytest.approx(1.5)
    assert summary["relative_iqr"] == pytest.approx(0.6) and noisy(summary)
    steady = summarize(np.full(101, 0.010) + np.linspace(0, 0.001, 101))
    assert steady["p99_ms"] == pytest.approx(10.99) and not noisy(steady)
    assert throughput(np.array([0.5, 0.25, 1.0]), batch_size=8)["examples_per_s"] == pytest.approx(16)


def test_report_schema_rows_for_teacher_student_and_every_artifact(teacher_dir, student_dir, exported,
                                                                   teacher, data, tmp_path):
    report = bench(teacher=teacher_dir, student=student_dir, artifacts=exported, data=data,
                   teacher_model=teacher, sequence_lengths=[32, 16], cache_folder=tmp_path, **FAST)
    assert report["schema_version"] == SCHEMA_VERSION == 7 and report["task"] == "text-classification"
    assert {"rows", "machine", "data", "settings", "peak", "warnings", "gates", "skipped"} <= set(report)
    assert [r["name"] for r in report["rows"]] == ["teacher", "student", "student/onnx-fp32",
                                                   "student/onnx-int8"]
    for row in report["rows"]:
        assert {"accuracy", "macro_f1", "agreement", "kl_to_teacher"} <= set(row["quality"])
        assert row["latency"]["p50_ms"] > 0 and row["size_bytes"] > 0 and row["params"] > 0
        assert set(row["latency_by_length"]) == {"32", "16"}
        assert {"p50_ms", "p90_ms", "p99_ms", "iqr_ms", "relative_iqr"} <= set(row["latency"])
        assert row["throughput"]["batch_size"] == 4 and row["throughput"]["examples_per_s"] > 0
        assert row["efficiency"]["operations"] > 0 and row["efficiency"]["fraction_of_peak"] > 0
        assert row["threads"] == 1  # the onnx-* target profiles say one thread
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["teacher"]["speedup"] == 1.0 and rows["teacher"]["reference"] is None
    assert rows["student/onnx-int8"]["reference"] == "student"
    # the fp32 ONNX export computes the same function as the PyTorch student
    assert rows["student/onnx-fp32"]["quality"]["accuracy"] == rows["student"]["quality"]["accuracy"]
    assert rows["student/onnx-fp32"]["accuracy_drop"] == 0.0
    # each drop comes with its paired interval: none for the teacher against itself, and it holds the drop
    assert rows["teacher"]["accuracy_drop_vs_teacher_ci95"] == [0.0, 0.0]
    assert rows["student/onnx-fp32"]["accuracy_drop_ci95"] == [0.0, 0.0]  # same predictions, row by row
    for row in report["rows"]:
        low, high = row["accuracy_drop_vs_teacher_ci95"]
        assert low <= row["accuracy_drop_vs_teacher"] + 1e-9 and row["accuracy_drop_vs_teacher"] <= high + 1e-9
    # the same matrix multiplies, counted by PyTorch and from the ONNX graph
    assert rows["student"]["efficiency"]["operations"] == rows["student/onnx-fp32"]["efficiency"]["operations"]
    assert rows["student/onnx-int8"]["efficiency"]["int8_operations"] > 0
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["torch"] and machine["onnxruntime"] and "flags" in machine
    assert {g["gate"] for g in report["gates"]} == {"accuracy_drop"}  # the targets' only budget
    assert "p50 ms @16" in markdown(report)
    # every key a report holds is documented in docs/report-schema.md
    documented = set(re.findall(r"`(\w+)`", SCHEMA_DOC.read_text()))
    keys = set(report) | {k for row in report["rows"] for k in row} | set(report["settings"]) | set(machine)
    keys |= {k for row in report["rows"] for part in ("latency", "efficiency", "throughput")
             for k in row[part]} | {k for gate in report["gates"] for k in gate}
    assert keys <= documented, sorted(keys - documented)
    write_report(report, tmp_path / "report")
    written = json.loads((tmp_path / "report" / "report.json").read_text())
    assert written["rows"][0]["name"] == "teacher" and (tmp_path / "report" / "report.png").stat().st_size > 0
    assert "| teacher |" in markdown(report) and "## Speed" in markdown(report)


def test_ort_format_runs_with_mobile_settings(teacher_dir, exported, teacher, data, tmp_path):
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    folder = tmp_path / "artifacts" / "ort-mobile"
    shutil.copytree(exported / "onnx-int8", folder)
    convert_onnx_models_to_ort(folder / "model.onnx", output_dir=folder,
                               optimization_styles=[OptimizationStyle.Fixed])
    (folder / "model.onnx").unlink()
    manifest = json.loads((folder / "edgekd.json").read_text())
    manifest.update(format="ort", model_file="model.ort", target="ort-mobile")
    (folder / "edgekd.json").write_text(json.dumps(manifest))
    shutil.copytree(exported / "onnx-int8", tmp_path / "artifacts" / "onnx-int8")
    report = bench(teacher=teacher_dir, student=None, artifacts=tmp_path / "artifacts", data=data,
                   teacher_model=teacher, measure_roofline=False, **FAST)
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["student/ort-mobile"]["runtime"] == "ort-mobile int8-dynamic"
    assert rows["student/ort-mobile"]["format"] == "ort" and rows["student/ort-mobile"]["size_bytes"] > 0
    # the same int8 graph through the .ort flatbuffer predicts what the .onnx file predicts
    assert rows["student/ort-mobile"]["quality"] == pytest.approx(rows["student/onnx-int8"]["quality"], abs=1e-4)


def test_pte_is_skipped_with_a_note_without_executorch(teacher_dir, exported, teacher, data, tmp_path,
                                                        monkeypatch):
    monkeypatch.setitem(sys.modules, "executorch.runtime", None)  # import fails as if not installed
    folder = tmp_path / "artifacts" / "executorch"
    folder.mkdir(parents=True)
    (folder / "model.pte").write_bytes(b"\0" * 16)
    (folder / "edgekd.json").write_text(json.dumps({"target": "executorch", "format": "pte",
                                                    "precision": "fp32", "model_file": "model.pte"}))
    with pytest.raises(UserError, match="nothing in .* can be benchmarked here: the ExecuTorch runtime"):
        bench(teacher=teacher_dir, student=None, artifacts=tmp_path / "artifacts", data=data,
              teacher_model=teacher, **FAST)
    shutil.copytree(exported / "onnx-fp32", tmp_path / "artifacts" / "onnx-fp32")
    report = bench(teacher=teacher_dir, student=None, artifacts=tmp_path / "artifacts", data=data,
                   teacher_model=teacher, measure_roofline=False, **FAST)
    assert [r["name"] for r in report["rows"]] == ["teacher", "student/onnx-fp32"]
    assert report["skipped"][0]["artifact"].endswith("executorch")
    assert any("pip install executorch" in w for w in report["warnings"])


def test_bench_rejects_folders_without_artifacts(teacher_dir, teacher, data, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no exported artifact"):
        bench(teacher=teacher_dir, student=None, artifacts=tmp_path / "empty", data=data,
              show_progress=False, teacher_model=teacher)
    with pytest.raises(UserError, match="does not exist"):
        bench(teacher=teacher_dir, student=None, artifacts=tmp_path / "missing", data=data,
              show_progress=False, teacher_model=teacher)


def test_bench_rejects_sequences_beyond_any_models_limit(teacher_dir, exported, teacher, data, tmp_path):
    with pytest.raises(UserError, match="--sequence-length 4096 is beyond the limit of teacher"):
        bench(teacher=teacher_dir, student=None, artifacts=None, data=data, sequence_length=4096,
              show_progress=False, teacher_model=teacher)
    # an artifact with a shorter limit than the teacher's is named
    folder = tmp_path / "artifacts" / "onnx-fp32"
    shutil.copytree(exported / "onnx-fp32", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 64}))
    with pytest.raises(UserError, match="--sequence-length 100 is beyond the limit of student/onnx-fp32 .64"):
        bench(teacher=teacher_dir, student=None, artifacts=tmp_path / "artifacts", data=data,
              sequence_length=100, show_progress=False, teacher_model=teacher)


def test_bench_rejects_data_labels_the_teacher_does_not_know(teacher_dir, teacher):
    data = TextDataset(texts=["w1 great"], labels=[0], label_names=["spam", "ham", "eggs"])
    with pytest.raises(UserError, match=r"labels \['eggs', 'ham', 'spam'\] are not the teacher's"):
        bench(teacher=teacher_dir, student=None, artifacts=None, data=data, teacher_model=teacher,
              show_progress=False)


def test_bench_rejects_a_model_whose_inputs_do_not_match_the_data(teacher_dir, teacher, data, tmp_path):
    from onnx import TensorProto, helper, numpy_helper, save

    # a "classifier" that wants image pixels, not tokens
    folder = tmp_path / "artifacts" / "vision"
    folder.mkdir(parents=True)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["pixel_values", "w"], ["logits"])], "vision",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(np.ones((4, 3), np.float32), "w")])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "model.onnx")
    (folder / "edgekd.json").write_text(json.dumps({"target": "vision", "format": "onnx",
                                                    "precision": "fp32", "model_file": "model.onnx"}))
    with pytest.raises(UserError, match=r"student/vision needs inputs \['pixel_values'\]"):
        bench(teacher=teacher_dir, student=None, artifacts=tmp_path / "artifacts", data=data,
              teacher_model=teacher, show_progress=False, measure_memory=False)


def test_artifacts_of_the_teacher_are_the_baseline_rows(teacher_dir, student_dir, exported, teacher,
                                                        data, tmp_path):
    baseline = tmp_path / "teacher-export"
    export(teacher_dir, targets=[load_target("onnx-fp32")], out=baseline)
    report = bench(teacher=teacher_dir, student=student_dir, artifacts=[baseline, exported], data=data,
                   teacher_model=teacher, measure_roofline=False, **FAST)
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["teacher", "student", "teacher/onnx-fp32", "student/onnx-fp32",
                          "student/onnx-int8"]
    assert rows["teacher/onnx-fp32"]["reference"] == "teacher"
    assert rows["teacher/onnx-fp32"]["quality"]["agreement"] == 1.0  # the teacher, exported
    assert rows["student/onnx-int8"]["reference"] == "student"


def test_bench_rejects_a_student_with_another_vocabulary(teacher_dir, teacher, data, tmp_path):
    from conftest import make_classifier, make_tokenizer
    from edgekd.models import save_model

    save_model(make_classifier("bert", layers=1, vocab_size=40), make_tokenizer(), tmp_path / "student")
    with pytest.raises(UserError, match="student's tokenizer produces 74 token ids but the model knows 40"):
        bench(teacher=teacher_dir, student=tmp_path / "student", artifacts=None, data=data,
              teacher_model=teacher, show_progress=False, measure_memory=False)


def test_machine_info_records_what_int8_speed_depends_on():
    from edgekd.benchmarking.machine import INSTRUCTION_FLAGS, busy, machine_info

    machine = machine_info()
    assert machine["cpu"] and machine["cores"] >= 1 and machine["torch"] and machine["onnxruntime"]
    assert set(machine["flags"]) <= set(INSTRUCTION_FLAGS)
    # the bench's own loading makes a load of about 1: only more than the cores is "busy"
    assert busy({"load_average_1m": 2.5, "usable_cores": 2})
    assert not busy({"load_average_1m": 1.2, "usable_cores": 2})


def test_a_manifest_cannot_point_outside_its_folder(tmp_path):
    from edgekd.benchmarking.runtimes import artifact_candidate

    (tmp_path / "outside.onnx").write_bytes(b"")
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "edgekd.json").write_text(json.dumps({"target": "x", "format": "onnx",
                                                    "model_file": "../outside.onnx"}))
    with pytest.raises(UserError, match="model_file must name a file inside"):
        artifact_candidate(folder, threads=1)
