"""Reliability: every command meets bad input with one line and leaves every file as it was;
runs killed with SIGKILL resume from an intact checkpoint; a full or read-only disk is a
clear error. RELIABILITY.md lists these guarantees and the tests that prove them."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import make_rows, write_jsonl
from edgekd.cli import app

runner = CliRunner()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) with the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, teacher_dir, student_dir):
    """A folder of good and broken inputs, built once; each case must leave it unchanged."""
    root = tmp_path_factory.mktemp("inputs")
    write_jsonl(make_rows(12), root / "good.jsonl")
    (root / "good.csv").write_text("text,label\nw1 good w2,positive\nw3 bad,negative\n")
    (root / "empty.csv").write_text("")
    (root / "header-only.csv").write_text("text,label\n")
    (root / "broken.jsonl").write_text('{"text": "w1", "label": "positive"}\n{"text": \n')
    (root / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    (root / "latin1.csv").write_bytes("text,label\ncaf\xe9 w1,positive\n".encode("latin-1"))
    write_jsonl([{"sentence": "w1 good", "label": "positive"}], root / "wrong-columns.jsonl")
    write_jsonl(make_rows(3) + [{"text": "w2", "label": "furious"}], root / "unknown-label.jsonl")
    (root / "a-folder.csv").mkdir()
    (root / "bad-target.yaml").write_text("description: x\nformat: onnx\nprecision: fp32\nspeed: 11\n")
    (root / "malformed-target.yaml").write_text("format: [onnx\n")
    truncated = root / "truncated-student"
    truncated.mkdir()
    for file in student_dir.iterdir():
        truncated.joinpath(file.name).write_bytes(file.read_bytes())
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    no_tokenizer = root / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        no_tokenizer.joinpath(name).write_bytes((student_dir / name).read_bytes())
    broken_artifact = root / "broken-export" / "onnx-fp32"
    broken_artifact.mkdir(parents=True)
    (broken_artifact / "model.onnx").write_bytes(b"\x08\x07\x12\x04trunc")
    (broken_artifact / "edgekd.json").write_text(json.dumps(
        {"schema_version": 2, "target": "onnx-fp32", "format": "onnx", "precision": "fp32",
         "model_file": "model.onnx"}))
    from conftest import make_classifier
    from transformers import BertTokenizer

    other_vocabulary = root / "other-vocabulary-teacher"
    make_classifier("bert", layers=2, vocab_size=60).save_pretrained(other_vocabulary)
    BertTokenizer(vocab={w: i for i, w in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"z{i}" for i in range(55)])}
    ).save_pretrained(other_vocabulary)
    return root


def distill_args(teacher, data, out, *extra):
    return ["distill", "--teacher", teacher, "--data", data, "--out", out, "--epochs", "1",
            "--max-length", "16", "--quiet", *extra]


# (name, argument list builder, expected fragment of the one error line)
CASES = [
    ("missing data", lambda w, t, s, o: distill_args(t, w / "nope.csv", o), "does not exist"),
    ("data is a folder", lambda w, t, s, o: distill_args(t, w / "a-folder.csv", o), "is a folder, not a data file"),
    ("empty csv", lambda w, t, s, o: distill_args(t, w / "empty.csv", o), "has no rows"),
    ("header-only csv", lambda w, t, s, o: distill_args(t, w / "header-only.csv", o), "has no rows"),
    ("malformed jsonl", lambda w, t, s, o: distill_args(t, w / "broken.jsonl", o), "not valid JSON"),
    ("malformed parquet", lambda w, t, s, o: distill_args(t, w / "broken.parquet", o), "cannot read"),
    ("non-utf8 csv", lambda w, t, s, o: distill_args(t, w / "latin1.csv", o), "not valid UTF-8"),
    ("wrong column", lambda w, t, s, o: distill_args(t, w / "wrong-columns.jsonl", o), "no column 'text'"),
    ("unknown label", lambda w, t, s, o: distill_args(t, w / "unknown-label.jsonl", o),
     "label 'furious' is not one of"),
    ("missing teacher", lambda w, t, s, o: distill_args(w / "no-teacher", w / "good.jsonl", o),
     "not a model folder"),
    ("mismatched vocabularies",
     lambda w, t, s, o: distill_args(w / "other-vocabulary-teacher", w / "good.jsonl", o,
                                     "--student", s), "vocabular"),
    ("negative epochs", lambda w, t, s, o: distill_args(t, w / "good.jsonl", o, "--epochs", "-1"),
     "--epochs must be at least 1"),
    ("absurd lr", lambda w, t, s, o: distill_args(t, w / "good.jsonl", o, "--lr", "1e9"),
     "--lr must be between"),
    ("absurd max length", lambda w, t, s, o: distill_args(t, w / "good.jsonl", o, "--max-length", "100000"),
     "--max-length"),
    ("unknown target", lambda w, t, s, o: ["export", s, "--target", "tpu-9000", "--out", o],
     "unknown target 'tpu-9000'"),
    ("unknown target key", lambda w, t, s, o: ["export", s, "--target", w / "bad-target.yaml", "--out", o],
     "unknown key 'speed'"),
    ("malformed target yaml", lambda w, t, s, o: ["export", s, "--target", w / "malformed-target.yaml",
                                                  "--out", o], "not valid YAML"),
    ("truncated safetensors", lambda w, t, s, o: ["export", w / "truncated-student", "--target",
                                                  "onnx-fp32", "--out", o], "student"),
    ("student without tokenizer", lambda w, t, s, o: ["export", w / "no-tokenizer", "--target",
                                                      "onnx-fp32", "--out", o], "tokenizer"),
    ("truncated onnx", lambda w, t, s, o: ["bench", "--teacher", t, "--data", w / "good.jsonl",
                                           "--artifacts", w / "broken-export", "--out", o,
                                           "--no-memory", "--quiet"], "corrupt or truncated"),
    ("bench unknown label", lambda w, t, s, o: ["bench", "--teacher", t, "--data",
                                                w / "unknown-label.jsonl", "--out", o, "--quiet"],
     "label 'furious'"),
    ("bench negative repeats", lambda w, t, s, o: ["bench", "--teacher", t, "--data", w / "good.jsonl",
                                                   "--repeats", "-3", "--out", o, "--quiet"], "repeats"),
]


@pytest.mark.parametrize("name, build, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_nonzero_and_touches_nothing(name, build, expected, workspace,
                                                           teacher_dir, student_dir, tmp_path):
    out = tmp_path / "out"
    before = snapshot(workspace), snapshot(teacher_dir), snapshot(student_dir)
    result = runner.invoke(app, [str(a) for a in build(workspace, teacher_dir, student_dir, out)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code not in (0, 2), result.output  # 2 is reserved for failed gates
    assert "Traceback" not in result.output and not isinstance(result.exception, AssertionError)
    error_lines = [line for line in lines if line.startswith("error:")]
    assert len(error_lines) == 1 and expected.lower() in error_lines[0].lower(), result.output
    assert (snapshot(workspace), snapshot(teacher_dir), snapshot(student_dir)) == before
    assert list(tmp_path.iterdir()) == []  # no output, partial or otherwise


# ------------------------------------------------------------------------- interruptions

SLOW_DRIVER = """
import sys, time
import edgekd.training.checkpoint as checkpoint
import edgekd.training.loop as loop
step, save = loop.Loop._step, checkpoint.save
def slow_step(self, batch, progress):
    time.sleep(0.1)
    return step(self, batch, progress)
def slow_save(folder, state):
    import torch, os
    # a checkpoint write that takes a while, so a kill can land inside it
    temporary = folder / f".{checkpoint.FILE_NAME}.tmp-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    temporary.write_bytes(b"partial")
    time.sleep(0.4)
    temporary.unlink()
    return save(folder, state)
loop.Loop._step = slow_step
checkpoint.save = slow_save
loop.checkpoint.save = slow_save
from edgekd.cli import main
sys.argv = ["edgekd"] + sys.argv[1:]
main()
"""


def _distill_command(teacher_dir, train_file, out, cache, *extra):
    return [str(a) for a in ("distill", "--teacher", teacher_dir, "--data", train_file, "--out", out,
                             "--student-layers", "2", "--epochs", "2", "--batch-size", "8",
                             "--max-length", "16", "--lr", "1e-3", "--checkpoint-every", "2",
                             "--device", "cpu", "--cache-dir", cache, "--quiet", *extra)]


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_sigkill_at_five_points_including_mid_checkpoint_write_always_resumes(
        teacher_dir, train_file, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "student"
    whole = runner.invoke(app, _distill_command(teacher_dir, train_file, tmp_path / "whole", cache))
    assert whole.exit_code == 0, whole.output
    driver = tmp_path / "driver.py"
    driver.write_text(SLOW_DRIVER)
    checkpoints = tmp_path / "student.checkpoints"
    kills = 0
    # point 1: during a checkpoint write (its temporary file exists); points 2-5: after a delay
    for point, delay in enumerate([None, 0.3, 1.0, 1.7, 2.4]):
        command = [sys.executable, str(driver), *_distill_command(teacher_dir, train_file, out, cache,
                                                                  *(["--resume"] if point else []))]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if delay is None:
            landed = _wait_for(lambda: any(checkpoints.glob(".checkpoint.pt.tmp-*")), timeout=120)
            assert landed, "the run never wrote a checkpoint"
        else:
            _wait_for(lambda: (checkpoints / "checkpoint.pt").exists(), timeout=120)
            time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        assert not out.exists() or (out / "model.safetensors").is_file()  # never a half student
    assert kills >= 4
    finish = runner.invoke(app, _distill_command(teacher_dir, train_file, out, cache, "--resume"))
    assert finish.exit_code == 0, finish.output
    expected, resumed = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    assert expected.keys() == resumed.keys()
    assert all((expected[k] == resumed[k]).all() for k in expected)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".student")]


def test_export_killed_mid_write_never_leaves_a_complete_looking_artifact(student_dir, tmp_path):
    out = tmp_path / "export"
    command = [sys.executable, "-m", "edgekd", "export", str(student_dir), "--target", "onnx-fp32",
               "--target", "onnx-int8", "--out", str(out)]
    for delay in (2.0, 4.0, 6.0):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        for folder in out.glob("*") if out.exists() else []:
            if folder.name.startswith("."):
                continue  # staging of the killed process: hidden, swept by the next run
            manifest = json.loads((folder / "edgekd.json").read_text())
            assert (folder / manifest["model_file"]).stat().st_size == manifest["size_bytes"]
        command = command + ["--overwrite"] if "--overwrite" not in command else command
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["onnx-fp32", "onnx-int8"]  # debris swept


def _children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_bench_killed_mid_run_leaves_no_probe_running_and_the_next_run_sweeps_its_debris(
        teacher_dir, student_dir, test_file, tmp_path):
    # setup: a private temporary folder, so that the bench's scratch folders can be watched
    scratch, out = tmp_path / "tmp", tmp_path / "report"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    command = [sys.executable, "-m", "edgekd", "bench", "--teacher", str(teacher_dir), "--student", str(student_dir),
               "--data", str(test_file), "--out", str(out), "--repeats", "2", "--throughput-batch", "0",
               "--no-roofline", "--no-plot", "--max-length", "32", "--sequence-length", "32", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    probes = []
    while not probes and time.monotonic() < deadline:  # until a probe has started
        time.sleep(0.05)
        probes = _children(process.pid) if list(scratch.glob(f"edgekd-memory-{process.pid}-*")) else []
    time.sleep(0.5)  # the probes are past their start-up
    # execute: SIGKILL while its memory probes run
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert probes and list(scratch.glob(f"edgekd-memory-{process.pid}-*"))
    # assert: the probes die with it, and the next run sweeps what it left and writes a whole report
    deadline = time.monotonic() + 2  # a probe on its own would go on loading torch for seconds
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
              for pid in probes) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in probes if Path(f"/proc/{pid}").exists()
                and "zombie" not in Path(f"/proc/{pid}/status").read_text()]
    out.mkdir(exist_ok=True)
    (out / f".report.json.tmp-{process.pid}").write_text('{"half": ')  # as a kill mid-write leaves it
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert not list(scratch.glob("edgekd-memory-*")) and not list(out.glob(".*"))
    assert json.loads((out / "report.json").read_text())["rows"][1]["memory"]["peak_rss_mb"] > 0


# ------------------------------------------------------------------------- full or read-only disk

@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("needs permission to mount a small tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_is_a_clear_error_and_leaves_nothing(small_disk, teacher_dir, train_file):
    (small_disk / "keep.txt").write_text("existing")
    result = runner.invoke(app, _distill_command(teacher_dir, train_file, small_disk / "student",
                                                 small_disk.parent / "cache", "--checkpoint-every", "0"))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "error:" in result.output
    assert "space" in result.output.lower(), result.output
    assert sorted(p.name for p in small_disk.iterdir()) == ["keep.txt"]
    assert (small_disk / "keep.txt").read_text() == "existing"


def test_read_only_output_is_a_clear_error(small_disk, student_dir):
    (small_disk / "keep.txt").write_text("existing")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    result = runner.invoke(app, ["export", str(student_dir), "--target", "onnx-fp32",
                                 "--out", str(small_disk / "export")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "error:" in result.output and (small_disk / "keep.txt").read_text() == "existing"


def test_every_test_reliability_md_cites_exists():
    """A guarantee is only as good as the test beside it: each cited file and test is real."""
    import re

    root = Path(__file__).resolve().parents[1]
    missing = []
    for line in (root / "RELIABILITY.md").read_text().splitlines():
        if not line.startswith("| "):
            continue
        current = None
        for reference in re.findall(r"`((?:tests/[\w/]+\.py)?(?:::\w+)?)`", line.rsplit("|", 2)[-2]):
            path, _, name = reference.partition("::")
            current = root / path if path else current
            if current is None or not current.is_file():
                missing.append(reference)
            elif name and not re.search(rf"^def {name}\(", current.read_text(), re.MULTILINE):
                missing.append(f"{current.name}::{name}")
    assert not missing, f"RELIABILITY.md cites tests that do not exist: {missing}"
