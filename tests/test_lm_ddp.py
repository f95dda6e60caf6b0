"""Causal-LM distillation under torchrun: two gloo processes on CPU, started by the real
`torchrun ... -m edgekd distill --task causal-lm` command, match one process trained on the
same global batches; rank 0 alone builds the teacher cache and writes the student."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from conftest import run_cli as run
from edgekd.training.distributed import Ranks
from edgekd.training.cache import open_or_build_top_k as open_or_build
from edgekd.lm.data import encode_texts
from lm_tiny import make_llama, make_lm_tokenizer, make_texts, save_llama

LR = 3e-3


def _args(teacher, train, out, cache) -> list[str]:
    # 13 texts in batches of 4: the last batch of each epoch has one row, so one rank gets none
    return [str(a) for a in ("distill", "--task", "causal-lm", "--teacher", teacher, "--data", train,
                             "--out", out, "--student-layers", "1", "--max-steps", "8", "--batch-size", "4",
                             "--max-length", "24", "--lr", LR, "--top-k", "8", "--divergence", "jsd",
                             "--checkpoint-every", "3", "--device", "cpu", "--cache-dir", cache, "--quiet")]


def test_two_gloo_ranks_match_one_process(tmp_path):
    # setup
    teacher = save_llama(tmp_path / "teacher", layers=3, seed=1)
    train = tmp_path / "train.txt"
    train.write_text("\n".join(make_texts(13)))
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    # execute: two processes under torchrun, then one process with the same global batch
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "edgekd"]
    process = subprocess.run([*torchrun, *_args(teacher, train, tmp_path / "ddp", tmp_path / "cache-ddp")],
                             env=environment, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    result = run(*_args(teacher, train, tmp_path / "single", tmp_path / "cache-single"))
    assert result.exit_code == 0, result.output
    # assert: the ranks stayed in sync (the loop checks and would have failed) and match one process
    ddp = load_file(tmp_path / "ddp" / "model.safetensors")
    single = load_file(tmp_path / "single" / "model.safetensors")
    assert ddp.keys() == single.keys()
    differences = torch.cat([(ddp[name] - single[name]).abs().flatten() for name in single])
    # The same gradient up to float rounding: each rank's token-mean loss is weighted by its
    # share of the batch's tokens (measured: at most 1e-7 apart; an unweighted mean of the
    # ranks' means with a rank without rows at full weight, moves parameters by ~1e-2).
    assert differences.max().item() < 1e-5
    records = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 9))  # one log, written by rank 0 alone
    assert process.stdout.count("student written to") == 1  # and one report, by rank 0
    single_losses = [r["loss"] for r in map(json.loads, (tmp_path / "single" / "metrics.jsonl").read_text().splitlines())
                     if "loss" in r]
    torch.testing.assert_close(torch.tensor([r["loss"] for r in records]), torch.tensor(single_losses),
                               atol=1e-4, rtol=1e-4)
    # one teacher cache, nothing half-built left, and no checkpoints after the finished run
    assert len([p for p in (tmp_path / "cache-ddp").iterdir() if (p / "meta.json").is_file()]) == 1
    assert not list((tmp_path / "cache-ddp").glob(".*"))
    assert not (tmp_path / "ddp.checkpoints").exists()


def test_the_ranks_build_the_top_k_shards_round_robin(tmp_path):
    # A one-process gloo group answers the barriers; Ranks says which rank this process plays.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        tokenizer, teacher = make_lm_tokenizer(), make_llama(layers=2, seed=1)
        examples = encode_texts(make_texts(6), tokenizer, max_length=16)
        options = dict(top_k=4, temperature=1.0, vocabulary=52, show_progress=False, shard_rows=2)
        built = open_or_build(teacher, examples, ranks=Ranks(rank=0, world=2), root=tmp_path / "two", **options)
        assert sorted(p.name for p in built.folder.glob("shard-*")) == ["shard-00000", "shard-00002"]
        opened = open_or_build(teacher, examples, ranks=Ranks(rank=1, world=2), root=tmp_path / "two", **options)
        assert sorted(p.name for p in built.folder.glob("shard-*")) == ["shard-00000", "shard-00001", "shard-00002"]
    finally:
        dist.destroy_process_group()
    one = open_or_build(teacher, examples, root=tmp_path / "one", **options)
    files = lambda root: {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}  # noqa: E731
    assert files(tmp_path / "two") == files(tmp_path / "one") and opened.folder.name == one.folder.name
    assert all(torch.equal(a, b) for a, b in zip(opened.gather([0, 5], width=16), one.gather([0, 5], width=16)))
