"""Causal-LM checkpoints: a run killed with SIGKILL and resumed ends with the same student as
an uninterrupted run; NaN stops keep the last good checkpoint; damaged or mismatched
checkpoints are refused in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_clean_error, run_cli as run
from edgekd.training import checkpoint
from edgekd.errors import UserError
from edgekd.lm import train as lm_train
from edgekd.lm.data import encode_texts
from edgekd.lm.models import make_lm_student
from edgekd.config import LMDistillConfig
from edgekd.lm.train import distill_lm
from lm_tiny import make_llama, make_lm_tokenizer, make_texts, save_llama

# Each step sleeps a little in this driver, so the test can kill the run between
# checkpoints; everything else is the real command line in a real process.
SLOW_DRIVER = """
import sys, time
import edgekd.training.loop as loop
step = loop.Loop._step
def slow_step(self, indices, progress):
    time.sleep(0.2)
    return step(self, indices, progress)
loop.Loop._step = slow_step
from edgekd.cli import main
sys.argv = ["edgekd"] + sys.argv[1:]
main()
"""


@pytest.fixture
def lm_run(tmp_path, monkeypatch):
    """A tiny Llama teacher folder, 16 training texts and the command that distils them."""
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    teacher = save_llama(tmp_path / "teacher", layers=3, seed=1)
    train = tmp_path / "train.txt"
    train.write_text("\n".join(make_texts(16)))

    def args(out: Path, *extra) -> list[str]:
        # 4 batches per epoch: 12 steps cross two epoch boundaries
        return [str(a) for a in ("distill", "--task", "causal-lm", "--teacher", teacher, "--data", train,
                                 "--out", out, "--student-layers", "1", "--max-steps", "12", "--batch-size", "4",
                                 "--max-length", "24", "--lr", "3e-3", "--top-k", "8",
                                 "--checkpoint-every", "3", "--device", "cpu", "--quiet", *extra)]
    return args


def _losses(folder: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


def test_sigkill_then_resume_gives_the_uninterrupted_student(lm_run, tmp_path):
    # setup: the uninterrupted run (it also builds the teacher cache both runs share)
    whole = tmp_path / "whole"
    result = run(*lm_run(whole))
    assert result.exit_code == 0, result.output
    # execute: the same run in a real process, killed with SIGKILL between checkpoints
    killed = tmp_path / "killed"
    driver = tmp_path / "driver.py"
    driver.write_text(SLOW_DRIVER)
    process = subprocess.Popen([sys.executable, str(driver), *lm_run(killed)], env=os.environ.copy(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    saved = checkpoint.checkpoint_dir(killed) / checkpoint.FILE_NAME
    deadline = time.monotonic() + 120
    while not saved.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a couple of steps past the first checkpoint
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    state = checkpoint.load(saved.parent)
    # every 3 steps and at the end of each epoch of 4 batches
    assert 3 <= state["step"] < 12 and (state["step"] % 3 == 0 or state["step"] % 4 == 0)
    assert (state["epoch"] - 1) * 4 + state["batches_done"] == state["step"]
    assert not killed.exists()  # the student is only written at the very end
    # execute: resume in another process
    result = run(*lm_run(killed, "--resume"))
    assert result.exit_code == 0, result.output
    # assert: bit-identical student and identical loss curve
    expected, resumed = load_file(whole / "model.safetensors"), load_file(killed / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    assert _losses(killed) == _losses(whole) and len(_losses(whole)) == 12
    assert not saved.parent.exists()  # finished: the checkpoints are gone
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".killed")]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    tokenizer, teacher = make_lm_tokenizer(), make_llama(layers=3, seed=1)
    examples = encode_texts(make_texts(16), tokenizer, max_length=24)
    student, _ = make_lm_student(teacher, tokenizer, layers="1")
    calls = {"count": 0}
    step_loss = lm_train.step_loss

    def poisoned(*args, **kwargs):
        calls["count"] += 1
        loss = step_loss(*args, **kwargs)
        return loss * float("nan") if calls["count"] == 6 else loss

    monkeypatch.setattr(lm_train, "step_loss", poisoned)
    out = tmp_path / "student"
    config = LMDistillConfig(max_steps=10, batch_size=4, max_length=24, top_k=0, checkpoint_every=2, device="cpu")
    with pytest.raises(UserError, match=r"^the loss became nan at step 6; the last good checkpoint is kept in "
                                        r".*student.checkpoints; lower --lr and rerun with --resume$"):
        distill_lm(teacher=teacher, student=student, tokenizer=tokenizer, train=examples, config=config,
                   out=out, vocabulary=52, show_progress=False)
    assert checkpoint.load(checkpoint.checkpoint_dir(out))["step"] == 4
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".student")]


def test_resume_refuses_a_corrupt_checkpoint_and_leaves_it_alone(lm_run, tmp_path):
    out = tmp_path / "student"
    folder = checkpoint.checkpoint_dir(out)
    folder.mkdir()
    (folder / checkpoint.FILE_NAME).write_bytes(b"PK\x03\x04 not really a checkpoint")
    result = run(*lm_run(out, "--resume"))
    assert_clean_error(result, "is corrupt or unreadable.*delete")
    assert (folder / checkpoint.FILE_NAME).read_bytes().startswith(b"PK\x03\x04 not")
    assert not out.exists()


def test_a_leftover_checkpoint_needs_resume_or_overwrite_and_matching_options(lm_run, tmp_path):
    out = tmp_path / "student"
    written_with = LMDistillConfig(max_steps=12, batch_size=4, max_length=24, lr=3e-3, top_k=8, divergence="jsd")
    checkpoint.save(checkpoint.checkpoint_dir(out), {"step": 3, "trainee": {}, "config": asdict(written_with),
                                                     "task": "causal-lm", "examples": 16})
    result = run(*lm_run(out))
    assert_clean_error(result, "holds a checkpoint of an unfinished run; "
                               "pass --resume to continue it or --overwrite")
    result = run(*lm_run(out, "--resume"))
    assert_clean_error(result, "was written with divergence='jsd', not 'forward_kl'; resume with the same options")
    # how often to save may change on resume (or it would be named first); the data may not
    other = tmp_path / "other.txt"
    other.write_text("\n".join(make_texts(5)))
    result = run(*lm_run(out, "--resume", "--divergence", "jsd", "--checkpoint-every", "5", "--data", other))
    assert_clean_error(result, "was written for 16 training examples, not 5; resume with the same --data")
    assert checkpoint.load(checkpoint.checkpoint_dir(out))["step"] == 3  # refused, not touched


def test_an_encoder_checkpoint_is_not_resumed_as_a_causal_lm(lm_run, tmp_path):
    out = tmp_path / "student"
    checkpoint.save(checkpoint.checkpoint_dir(out), {"step": 3, "trainee": {}, "config": {"epochs": 3},
                                                     "task": "text-classification", "examples": 16})
    result = run(*lm_run(out, "--resume"))
    assert_clean_error(result, "is not from a causal-lm run")
