"""Checkpoints: a run killed with SIGKILL mid-epoch and resumed ends with the same student
as an uninterrupted run; NaN stops keep the last good checkpoint; damaged files are refused."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.config import DistillConfig
from edgekd.data import Columns, load_file as load_data
from edgekd.training import checkpoint
from edgekd.training.objective import Objective
from edgekd.training.train import distill
from edgekd.errors import UserError
from edgekd.models import load_classifier, select_layers

# Each step sleeps a little in this driver, so the test can kill the run mid-epoch;
# everything else is the real command line in a real process.
SLOW_DRIVER = """
import signal, sys, time
# Ctrl-C reaches a command run in a terminal's foreground; a test runner started in the
# background hands its children SIGINT ignored, so the default handler is put back here
signal.signal(signal.SIGINT, signal.default_int_handler)
import edgekd.training.loop as loop
step = loop.Loop._step
def slow_step(self, batch, progress):
    time.sleep(0.2)
    return step(self, batch, progress)
loop.Loop._step = slow_step
from edgekd.cli import main
sys.argv = ["edgekd"] + sys.argv[1:]
main()
"""


def _args(teacher_dir, train_file, out, cache):
    return ["distill", "--teacher", str(teacher_dir), "--data", str(train_file), "--out", str(out),
            "--student-layers", "2", "--epochs", "2", "--batch-size", "4", "--max-length", "16",
            "--lr", "1e-3", "--checkpoint-every", "3", "--device", "cpu", "--cache-dir", str(cache),
            "--hidden-mse-weight", "1", "--quiet"]


def _steps(folder: Path) -> list[dict]:
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "loss" in r]


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_student(teacher_dir, train_file, tmp_path):
    runner = CliRunner()
    cache = tmp_path / "cache"
    # setup: the uninterrupted run (it also builds the teacher cache both runs share)
    result = runner.invoke(app, _args(teacher_dir, train_file, tmp_path / "whole", cache))
    assert result.exit_code == 0, result.output
    # execute: the same run in a real process, killed with SIGKILL mid-epoch
    killed = tmp_path / "killed"
    driver = tmp_path / "driver.py"
    driver.write_text(SLOW_DRIVER)
    process = subprocess.Popen([sys.executable, str(driver), *_args(teacher_dir, train_file, killed, cache)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    saved = checkpoint.checkpoint_dir(killed) / checkpoint.FILE_NAME
    deadline = time.monotonic() + 120
    while not saved.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a couple of steps past the checkpoint: mid-epoch, between checkpoints
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    state = checkpoint.load(saved.parent)
    assert 3 <= state["step"] < 15 and state["epoch"] == 1  # 15 steps per epoch: killed in epoch 1
    assert not killed.exists()  # the student is only written at the very end
    # execute: resume in another process
    result = runner.invoke(app, [*_args(teacher_dir, train_file, killed, cache), "--resume"])
    assert result.exit_code == 0, result.output
    # assert: bit-identical student and identical loss curve
    whole, resumed = load_file(tmp_path / "whole" / "model.safetensors"), load_file(killed / "model.safetensors")
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name
    assert [(r["step"], r["loss"]) for r in _steps(killed)] == [(r["step"], r["loss"]) for r in _steps(tmp_path / "whole")]
    assert not saved.parent.exists()  # finished: the checkpoints are gone
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".killed")]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
        teacher_dir, train_file, tmp_path, monkeypatch):
    teacher, tokenizer = load_classifier(teacher_dir)
    data = load_data(train_file, columns=Columns(), label2id=teacher.config.label2id)
    calls = {"count": 0}
    forward = Objective.forward

    def poisoned(self, *args):
        calls["count"] += 1
        loss, parts = forward(self, *args)
        return (loss * float("nan"), parts) if calls["count"] == 6 else (loss, parts)

    monkeypatch.setattr(Objective, "forward", poisoned)
    out = tmp_path / "student"
    config = DistillConfig(epochs=1, batch_size=8, max_length=16, checkpoint_every=2, device="cpu")
    with pytest.raises(UserError, match=r"the loss became nan at step 6; the last good checkpoint is kept in "
                                        r".*student.checkpoints; lower --lr and rerun with --resume"):
        distill(teacher=teacher, student=select_layers(teacher, [0]), tokenizer=tokenizer, train=data,
                validation=None, config=config, out=out, show_progress=False, cache_dir=tmp_path / "cache")
    assert checkpoint.load(checkpoint.checkpoint_dir(out))["step"] == 4
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".student")]


def test_resume_refuses_a_corrupt_checkpoint_and_leaves_it_alone(teacher_dir, train_file, tmp_path):
    out = tmp_path / "student"
    folder = checkpoint.checkpoint_dir(out)
    folder.mkdir()
    (folder / checkpoint.FILE_NAME).write_bytes(b"PK\x03\x04 not really a checkpoint")
    result = CliRunner().invoke(app, [*_args(teacher_dir, train_file, out, tmp_path / "cache"), "--resume"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "is corrupt or unreadable" in result.output and "delete" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert (folder / checkpoint.FILE_NAME).read_bytes().startswith(b"PK\x03\x04 not")
    assert not out.exists()


def test_a_leftover_checkpoint_needs_resume_or_overwrite_and_matching_options(teacher_dir, train_file, tmp_path):
    out = tmp_path / "student"
    # 64 rows, 6 of them held out for validation: 58 training examples
    checkpoint.save(checkpoint.checkpoint_dir(out), {"step": 3, "config": {**DistillConfig().__dict__, "lr": 5e-4},
                                                     "task": "text-classification", "examples": 58})
    runner = CliRunner()
    result = runner.invoke(app, _args(teacher_dir, train_file, out, tmp_path / "cache"))
    assert result.exit_code == 1 and "pass --resume to continue it or --overwrite" in result.output
    result = runner.invoke(app, [*_args(teacher_dir, train_file, out, tmp_path / "cache"), "--resume"])
    assert result.exit_code == 1 and "was written with batch_size=16, not 4" in result.output


def test_checkpoints_hold_no_code(tmp_path):
    # A checkpoint whose pickle would run code is refused by weights_only loading.
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo owned > " + str(tmp_path / "owned"),))

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"format": 1, "step": 1, "payload": Payload()}, folder / checkpoint.FILE_NAME)
    with pytest.raises(UserError, match="corrupt or unreadable"):
        checkpoint.load(folder)
    assert not (tmp_path / "owned").exists()


@pytest.mark.parametrize("signal_number, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_sigterm_and_ctrl_c_stop_in_one_line_keep_the_checkpoint_and_resume(teacher_dir, train_file, tmp_path,
                                                                           signal_number, code, name):
    # setup: a real process, stopped after its first checkpoint
    out, cache = tmp_path / "student", tmp_path / "cache"
    driver = tmp_path / "driver.py"
    driver.write_text(SLOW_DRIVER)
    process = subprocess.Popen([sys.executable, str(driver), *_args(teacher_dir, train_file, out, cache)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    saved = checkpoint.checkpoint_dir(out) / checkpoint.FILE_NAME
    deadline = time.monotonic() + 120
    while not saved.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    # execute
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=60)
    # assert: one line saying what and how to go on, its exit code, nothing half-written
    assert process.returncode == code, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == [f"edgekd distill was interrupted ({name}); nothing half-written was kept; "
                     "rerun it with --resume to continue from its last checkpoint"], stderr[-2000:]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".student")]
    assert checkpoint.load(saved.parent)["step"] >= 3
    result = CliRunner().invoke(app, [*_args(teacher_dir, train_file, out, cache), "--resume"])
    assert result.exit_code == 0, result.output
