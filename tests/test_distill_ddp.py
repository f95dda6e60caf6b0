"""Two processes over gloo on CPU, as torchrun would start them: the ranks stay identical
and match one process trained on the same global batches."""

import os
import socket

import torch
import torch.multiprocessing as multiprocessing
from safetensors.torch import load_file, save_file

from edgekd.config import DistillConfig
from edgekd.data import Columns, load_file as load_data
from edgekd.training.train import distill
from edgekd.models import load_classifier, select_layers

# Intermediate losses on, so the projections and the sharded teacher cache take part too.
CONFIG = DistillConfig(epochs=2, batch_size=8, max_length=16, lr=1e-3, device="cpu", seed=0,
                       hidden_mse_weight=1.0, minilm_weight=1.0, checkpoint_every=0)


def _train(teacher_dir, train_file, out, cache):
    """Distill with dropout off (so one and two processes compute the same thing) and
    return the trained student's parameters."""
    teacher, tokenizer = load_classifier(teacher_dir)
    student = select_layers(teacher, [0, 3])
    for module in student.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    data = load_data(train_file, columns=Columns(), label2id=teacher.config.label2id)
    distill(teacher=teacher, student=student, tokenizer=tokenizer, train=data, validation=None,
            config=CONFIG, out=out, cache_dir=cache, show_progress=False)
    return {name: tensor.detach().clone().contiguous() for name, tensor in student.state_dict().items()}


def _rank(rank, world, port, teacher_dir, train_file, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    state = _train(teacher_dir, train_file, folder / "ddp", folder / "cache-ddp")
    save_file(state, str(folder / f"rank{rank}.safetensors"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_gloo_ranks_stay_identical_and_match_one_process(teacher_dir, train_file, tmp_path):
    # execute: two ranks, then one process with the same global batch
    multiprocessing.spawn(_rank, args=(2, _free_port(), teacher_dir, train_file, tmp_path), nprocs=2, join=True)
    single = _train(teacher_dir, train_file, tmp_path / "single", tmp_path / "cache-single")
    # assert
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks differ in {name}"
    # Not bit-identical: per-token means (hidden MSE, relations) are taken per shard, and
    # Adam turns tiny gradient differences of near-zero gradients into whole steps. So:
    # no parameter is more than two learning-rate steps away, and on average far less.
    differences = torch.cat([(rank0[name] - single[name]).abs().flatten() for name in single])
    assert differences.max().item() < 2 * CONFIG.lr
    assert differences.mean().item() < CONFIG.lr / 10
    written = load_file(tmp_path / "ddp" / "model.safetensors")  # only rank 0 writes
    assert (tmp_path / "ddp" / "metrics.jsonl").is_file() and written.keys() <= rank0.keys()
    # the ranks built the teacher cache the one process wrote as it trained: the same rows, in the same shards
    files = lambda root: sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())  # noqa: E731
    assert files(tmp_path / "cache-ddp") == files(tmp_path / "cache-single")
    assert any("/shard-00000/logits.npy" in name for name in files(tmp_path / "cache-ddp"))
