"""Gates: which rows they judge, where limits come from, and exit code 2 from the CLI
(while bad input still exits 1)."""

import json
import re

import pytest
from typer.testing import CliRunner

from conftest import make_rows, write_jsonl
from edgekd.benchmarking.gates import GateLimits, check_gates, raise_for_failed_gates
from edgekd.cli import app
from edgekd.errors import GateFailed, UserError
from edgekd.exporting.stage import export
from edgekd.targets import load_target

runner = CliRunner()
FAST_CLI = ["--repeats", "2", "--throughput-batch", "0", "--no-memory", "--no-roofline",
            "--no-plot", "--max-length", "32", "--sequence-length", "32", "--quiet"]


def row(name, *, target=None, drop=0.0, p50=5.0, size_mb=10.0):
    return {"name": name, "format": "pytorch" if target is None else "onnx", "target": target,
            "accuracy_drop": drop, "latency": {"p50_ms": p50}, "size_bytes": int(size_mb * 1e6)}


def test_only_shipped_rows_are_gated_and_flags_override_target_budgets():
    rows = [row("teacher", p50=50), row("student", p50=40),
            row("student/onnx-int8", target="onnx-int8", drop=1.5, p50=4, size_mb=6),
            row("student/custom", target="not-a-shipped-target", drop=9)]
    results = check_gates(rows, GateLimits(max_latency_ms=4.5))
    by_key = {(r["artifact"], r["gate"]): r for r in results}
    # onnx-int8.yaml budgets max_accuracy_drop 1.0; the unknown target has no budgets
    assert set(by_key) == {("student/onnx-int8", "accuracy_drop"), ("student/onnx-int8", "latency_ms"),
                           ("student/custom", "latency_ms")}
    assert by_key[("student/onnx-int8", "accuracy_drop")]["limit"] == 1.0
    assert not by_key[("student/onnx-int8", "accuracy_drop")]["passed"]
    assert by_key[("student/onnx-int8", "accuracy_drop")]["source"] == "target onnx-int8"
    assert by_key[("student/onnx-int8", "latency_ms")]["passed"]
    overridden = check_gates(rows, GateLimits(max_accuracy_drop=2.0))
    assert all(r["passed"] == (r["artifact"] == "student/onnx-int8") for r in overridden)


def test_without_artifacts_the_student_is_gated():
    results = check_gates([row("teacher", size_mb=90), row("student", size_mb=30)],
                          GateLimits(max_size_mb=20))
    assert [(r["artifact"], r["value"], r["passed"]) for r in results] == [("student", 30.0, False)]


def test_failed_gates_name_gate_artifact_and_both_numbers_with_exit_code_2():
    results = check_gates([row("teacher"), row("student/onnx-int8", target="onnx-int8", size_mb=12.5)],
                          GateLimits(max_size_mb=10))
    with pytest.raises(GateFailed) as failure:
        raise_for_failed_gates(results)
    assert failure.value.exit_code == 2
    assert str(failure.value) == ("gate --max-size-mb failed for student/onnx-int8: 12.50 MB > "
                                  "limit 10.00 MB (from command line)")
    raise_for_failed_gates([r for r in results if r["passed"]])  # nothing failed: no error


def test_nan_accuracy_fails_an_accuracy_gate_and_bad_limits_are_rejected():
    results = check_gates([row("student", drop=float("nan"))], GateLimits(max_accuracy_drop=1))
    assert results[0]["passed"] is False
    with pytest.raises(UserError, match="--max-latency-ms must be a number >= 0"):
        GateLimits(max_latency_ms=-1)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, student_dir):
    out = tmp_path_factory.mktemp("gates") / "export"
    export(student_dir, targets=[load_target("onnx-int8")], out=out)
    return out


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_exits_2_when_a_gate_fails_and_still_writes_the_report(teacher_dir, artifacts, test_file, tmp_path):
    result = run("bench", "--teacher", teacher_dir, "--artifacts", artifacts, "--data", test_file,
                 "--out", tmp_path / "report", "--max-size-mb", "0.001", *FAST_CLI)
    assert result.exit_code == 2, result.output
    assert re.search(r"error: gate --max-size-mb failed for student/onnx-int8: 0\.\d\d MB > limit "
                     r"0\.00 MB \(from command line\)", result.output), result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [g["passed"] for g in report["gates"] if g["gate"] == "size_mb"] == [False]
    passing = run("bench", "--teacher", teacher_dir, "--artifacts", artifacts, "--data", test_file,
                  "--out", tmp_path / "report2", "--max-size-mb", "100", "--max-accuracy-drop", "100",
                  *FAST_CLI)
    assert passing.exit_code == 0, passing.output


@pytest.mark.parametrize("case", ["unknown label", "sequence too long", "nothing benchmarkable"])
def test_cli_bad_input_exits_1_not_2(case, teacher_dir, artifacts, test_file, tmp_path):
    args = {"--teacher": teacher_dir, "--artifacts": artifacts, "--data": test_file,
            "--out": tmp_path / "report", "--max-size-mb": "0"}
    expected = {"unknown label": "label 'furious' is not one of the teacher's labels",
                "sequence too long": "--sequence-length 4096 is beyond the limit of teacher",
                "nothing benchmarkable": "holds no exported artifact"}[case]
    extra = list(FAST_CLI)
    if case == "unknown label":
        args["--data"] = write_jsonl(make_rows(3) + [{"text": "w1", "label": "furious"}], tmp_path / "bad.jsonl")
    elif case == "sequence too long":
        extra[extra.index("--sequence-length") + 1] = "4096"
    else:
        args["--artifacts"] = tmp_path
    result = run("bench", *[x for pair in args.items() for x in pair], *extra)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and expected in result.output, result.output
    assert not (tmp_path / "report").exists()


def test_teacher_artifacts_give_each_student_artifact_its_same_target_speedup(teacher_dir, student_dir, artifacts,
                                                                             test_file, tmp_path):
    # setup: the teacher exported to the same target as the student's artifact
    teacher_export = tmp_path / "teacher-export"
    result = run("export", teacher_dir, "--target", "onnx-int8", "--out", teacher_export)
    assert result.exit_code == 0, result.output
    # execute
    result = run("bench", "--teacher", teacher_dir, "--student", student_dir, "--artifacts", artifacts,
                 "--teacher-artifacts", teacher_export, "--data", test_file, "--out", tmp_path / "report",
                 "--max-accuracy-drop", "100", *FAST_CLI)
    # assert: both speedups, each the ratio of two p50s of this one run
    assert result.exit_code == 0, result.output
    assert "vs teacher/target" in result.output
    rows = {row["name"]: row for row in json.loads((tmp_path / "report" / "report.json").read_text())["rows"]}
    assert set(rows) == {"teacher", "student", "student/onnx-int8", "teacher/onnx-int8"}
    p50 = {name: row["latency"]["p50_ms"] for name, row in rows.items()}
    assert rows["student/onnx-int8"]["speedup_same_target"] == pytest.approx(p50["teacher/onnx-int8"] / p50["student/onnx-int8"])
    assert rows["student/onnx-int8"]["speedup"] == pytest.approx(p50["teacher"] / p50["student/onnx-int8"])
    assert rows["student"]["speedup_same_target"] == pytest.approx(rows["student"]["speedup"])
    assert rows["teacher"]["speedup_same_target"] is None and rows["teacher/onnx-int8"]["speedup_same_target"] is None
    gates = json.loads((tmp_path / "report" / "report.json").read_text())["gates"]
    assert gates and {gate["artifact"] for gate in gates} == {"student/onnx-int8"}  # the baseline is not gated
    # a student's export given as the teacher's is refused by name
    wrong = run("bench", "--teacher", teacher_dir, "--teacher-artifacts", artifacts, "--data", test_file,
                "--out", tmp_path / "wrong", *FAST_CLI)
    assert wrong.exit_code == 1 and "Traceback" not in wrong.output
    assert f"was exported from {student_dir}, not from the teacher" in " ".join(wrong.output.split())
    assert not (tmp_path / "wrong").exists()
