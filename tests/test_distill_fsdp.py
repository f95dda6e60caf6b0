"""--fsdp under torchrun: two gloo processes on CPU, started by the real `torchrun ... -m edgekd
distill` command, shard the teacher and the student with PyTorch FSDP2, match one process (and
DDP) trained on the same global batches, resume from a checkpoint after a crash as if never
stopped, and save a student that plain transformers loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_clean_error, make_classifier, make_rows, make_tokenizer, run_cli as run, write_jsonl
from lm_tiny import make_texts, save_llama

# Each rank records what it shards (the module's class, the parameters it holds and their whole
# count) in $EDGEKD_TEST_RECORD/rank<r>.jsonl; with $EDGEKD_TEST_CRASH_AT every rank exits hard
# at that step, as a killed job would.
DRIVER = """
import json, os, sys
import torch.distributed as dist
import edgekd.training.distributed as distributed
import edgekd.training.loop as loop
shard = distributed.shard
def recording_shard(module):
    name, whole = type(module).__name__, sum(p.numel() for p in module.parameters())
    sharded = shard(module)
    held = sum(p.to_local().numel() for p in sharded.parameters())
    with open(os.path.join(os.environ["EDGEKD_TEST_RECORD"], f"rank{dist.get_rank()}.jsonl"), "a") as f:
        f.write(json.dumps({"module": name, "held": held, "whole": whole}) + "\\n")
    return sharded
distributed.shard = recording_shard
crash_at = int(os.environ.get("EDGEKD_TEST_CRASH_AT", "0"))
step = loop.Loop._step
def crashing_step(self, indices, progress):
    if crash_at and progress.step + 1 == crash_at:
        os._exit(3)
    return step(self, indices, progress)
loop.Loop._step = crashing_step
from edgekd.cli import main
sys.argv = ["edgekd"] + sys.argv[1:]
main()
"""


def _torchrun(tmp_path, args: list, *, crash_at: int = 0) -> subprocess.CompletedProcess:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    record = tmp_path / "record"
    record.mkdir(exist_ok=True)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "EDGEKD_TEST_RECORD": str(record),
                   "EDGEKD_TEST_CRASH_AT": str(crash_at)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(driver)]
    return subprocess.run([*command, *map(str, args)], env=environment, capture_output=True, text=True, timeout=600)


def _lm_args(teacher, train, out, *extra) -> list:
    return ["distill", "--task", "causal-lm", "--teacher", teacher, "--data", train, "--out", out,
            "--student-layers", "1", "--max-steps", "8", "--batch-size", "4", "--max-length", "24", "--lr", "3e-3",
            "--top-k", "0", "--divergence", "jsd", "--checkpoint-every", "3", "--device", "cpu", "--quiet",
            "--allow-poor-student", *extra]


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


@pytest.fixture
def llama_files(tmp_path):
    """A tiny Llama teacher and 13 training texts: in batches of 4 the last batch of each epoch has
    one row, so one rank gets none."""
    train = tmp_path / "train.txt"
    train.write_text("\n".join(make_texts(13)))
    return save_llama(tmp_path / "teacher", layers=3, seed=1), train


def test_fsdp_shards_teacher_and_student_and_matches_one_process(llama_files, tmp_path):
    from transformers import AutoModelForCausalLM

    teacher, train = llama_files
    process = _torchrun(tmp_path, _lm_args(teacher, train, tmp_path / "fsdp", "--fsdp"))
    assert process.returncode == 0, process.stderr[-3000:]
    single = run(*_lm_args(teacher, train, tmp_path / "single"))
    assert single.exit_code == 0, single.output
    fsdp, one = load_file(tmp_path / "fsdp" / "model.safetensors"), load_file(tmp_path / "single" / "model.safetensors")
    # The same gradients up to float rounding (measured: 2e-6 against one process, 3e-8 against DDP)
    assert _max_difference(fsdp, one) < 1e-5
    # every rank sharded the teacher and the student, and holds half of each (a whole block or none)
    for rank in (0, 1):
        records = [json.loads(line) for line in (tmp_path / "record" / f"rank{rank}.jsonl").read_text().splitlines()]
        assert [r["module"] for r in records] == ["LlamaForCausalLM", "LlamaForCausalLM"]  # teacher, then student
        for record in records:
            assert record["held"] == pytest.approx(record["whole"] / 2, rel=0.05)
    assert process.stdout.count("student written to") == 1  # rank 0 alone reports and writes
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp")  # an ordinary Hugging Face folder
    assert type(reloaded).__name__ == "LlamaForCausalLM" and reloaded.config.num_hidden_layers == 1
    assert not (tmp_path / "fsdp.checkpoints").exists()


def test_fsdp_resumes_after_a_crash_as_if_never_stopped(llama_files, tmp_path):
    teacher, train = llama_files
    whole = _torchrun(tmp_path, _lm_args(teacher, train, tmp_path / "whole", "--fsdp"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    crashed = _torchrun(tmp_path, _lm_args(teacher, train, tmp_path / "resumed", "--fsdp"), crash_at=5)
    assert crashed.returncode != 0 and not (tmp_path / "resumed").exists()
    assert (tmp_path / "resumed.checkpoints").is_dir()  # the last checkpoint survived
    loud = [arg for arg in _lm_args(teacher, train, tmp_path / "resumed", "--fsdp", "--resume") if arg != "--quiet"]
    resumed = _torchrun(tmp_path, loud)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step 4" in resumed.stdout + resumed.stderr  # the checkpoint at the end of epoch 1
    assert _max_difference(load_file(tmp_path / "whole" / "model.safetensors"),
                           load_file(tmp_path / "resumed" / "model.safetensors")) < 1e-6


def test_fsdp_text_classifier_with_intermediate_losses_matches_ddp(tmp_path):
    teacher = tmp_path / "teacher"
    model = make_classifier("bert", layers=4)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0  # the ranks draw alike
    model.save_pretrained(teacher)
    make_tokenizer().save_pretrained(teacher)
    data = write_jsonl(make_rows(48, seed=1), tmp_path / "train.jsonl")
    args = ["distill", "--teacher", teacher, "--data", data, "--student-layers", "2", "--epochs", "1",
            "--batch-size", "8", "--max-length", "16", "--lr", "1e-3", "--hidden-mse-weight", "1",
            "--no-teacher-cache", "--device", "cpu", "--quiet", "--allow-poor-student", "--checkpoint-every", "0"]
    process = _torchrun(tmp_path, [*args, "--out", tmp_path / "fsdp", "--fsdp"])
    assert process.returncode == 0, process.stderr[-3000:]
    ddp = _torchrun(tmp_path, [*args, "--out", tmp_path / "ddp"])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    fsdp, whole = load_file(tmp_path / "fsdp" / "model.safetensors"), load_file(tmp_path / "ddp" / "model.safetensors")
    # the same maths as DDP, up to float rounding (measured: 2e-8); DDP's own distance from one
    # process (per-shard token means of the hidden-state loss) is test_distill_ddp's
    assert _max_difference(fsdp, whole) < 1e-6
    modules = [json.loads(line)["module"] for line in (tmp_path / "record" / "rank1.jsonl").read_text().splitlines()]
    assert modules == ["BertForSequenceClassification", "ProjectedStudent"]  # the student with its projections


def test_fsdp_refuses_what_it_cannot_shard(tmp_path):
    teacher = save_llama(tmp_path / "teacher", layers=3, seed=1)
    train = tmp_path / "train.txt"
    train.write_text("\n".join(make_texts(8)))
    result = run("distill", "--task", "causal-lm", "--teacher", teacher, "--data", train, "--out", tmp_path / "s",
                 "--fsdp")
    assert_clean_error(result, "--fsdp runs the sharded teacher inside the training loop, not over a top-k cache")
    classifier = tmp_path / "classifier"
    make_classifier("bert", layers=2).save_pretrained(classifier)
    make_tokenizer().save_pretrained(classifier)
    data = write_jsonl(make_rows(16, seed=1), tmp_path / "train.jsonl")
    result = run("distill", "--teacher", classifier, "--data", data, "--out", tmp_path / "c", "--fsdp")
    assert_clean_error(result, "add --no-teacher-cache")
