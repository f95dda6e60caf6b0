"""The teacher cache: stored outputs equal the teacher's, reused when nothing changed,
rebuilt when weights, data or tokenisation change."""


import numpy as np
import pytest
import torch

from conftest import make_classifier, make_rows, make_tokenizer
from edgekd.data import TextDataset, batches, collate, encode
from edgekd.training.cache import open_or_build
from edgekd.training.distributed import Ranks
from edgekd.training.objective import Needs, forward_outputs

NEEDS = Needs(hidden_layers=(0, 2), attention_layers=(1,), qkv_layer=2)


def _encoded(rows=20, max_length=24, seed=4):
    texts = [r["text"] for r in make_rows(rows, seed=seed)]
    dataset = TextDataset(texts=texts, labels=[None] * rows, label_names=["a", "b", "c"])
    return encode(dataset, make_tokenizer(), max_length=max_length)


def _build(teacher, encoded, root, needs=NEEDS):
    return open_or_build(teacher, encoded, needs, root=root, device=torch.device("cpu"), pad_token_id=0,
                         ranks=Ranks(), batch_size=8, show_progress=False)


def _count_forwards(model):
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_cached_outputs_equal_the_teachers_in_fp16(tmp_path):
    teacher = make_classifier("bert", layers=3)
    encoded = _encoded()
    cache = _build(teacher, encoded, tmp_path)
    batch = next(batches(encoded, batch_size=7, pad_token_id=0, shuffle=True, seed=1))
    with torch.no_grad():
        expected = forward_outputs(teacher, batch, NEEDS)
    got = cache.gather(batch["index"].tolist(), width=batch["input_ids"].shape[1], device=torch.device("cpu"))
    mask = batch["attention_mask"].bool()
    close = dict(rtol=2e-3, atol=2e-3)  # fp16 storage
    torch.testing.assert_close(got["logits"], expected["logits"], **close)
    for layer in (0, 2):
        torch.testing.assert_close(got["hidden"][layer][mask], expected["hidden"][layer][mask], **close)
    pair_mask = mask[:, None, :, None] & mask[:, None, None, :]
    torch.testing.assert_close(got["attention"][1].masked_fill(~pair_mask, 0),
                               expected["attention"][1].masked_fill(~pair_mask, 0), **close)
    for stored, reference in zip(got["qkv"], expected["qkv"]):
        torch.testing.assert_close(stored[mask], reference[mask], **close)
    arrays = list(cache.folder.rglob("*.npy"))
    assert {np.load(a, mmap_mode="r").dtype for a in arrays if "offsets" not in a.name} == {np.dtype("float16")}


def test_cache_is_reused_and_rebuilt_when_anything_it_depends_on_changes(tmp_path):
    teacher = make_classifier("bert", layers=3)
    encoded = _encoded()
    first = _build(teacher, encoded, tmp_path)
    calls = _count_forwards(teacher)
    assert _build(teacher, encoded, tmp_path).folder == first.folder and not calls  # reused, teacher idle
    folders = {first.folder}
    with torch.no_grad():
        changed = make_classifier("bert", layers=3)
        changed.classifier.bias += 0.01  # weights changed
    folders.add(_build(changed, encoded, tmp_path).folder)
    folders.add(_build(teacher, _encoded(seed=5), tmp_path).folder)  # data changed
    folders.add(_build(teacher, _encoded(max_length=12), tmp_path).folder)  # tokenisation changed
    folders.add(_build(teacher, encoded, tmp_path, needs=Needs()).folder)  # stored outputs changed
    assert len(folders) == 5 and calls  # every change rebuilt with the teacher
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_shards_two_ranks_build_round_robin_are_byte_identical_to_one_process(tmp_path):
    # Under torchrun rank r builds shards r, r + world, ...; a one-process gloo group answers the
    # barriers, and Ranks says which rank this process plays.
    import torch.distributed as dist

    teacher = make_classifier("bert", layers=3)
    encoded = _encoded(rows=11)
    options = dict(device=torch.device("cpu"), pad_token_id=0, batch_size=3, show_progress=False, shard_rows=2)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        calls = _count_forwards(teacher)
        two = open_or_build(teacher, encoded, NEEDS, root=tmp_path / "two", ranks=Ranks(rank=0, world=2), **options)
        assert sorted(p.name for p in two.folder.glob("shard-*")) == ["shard-00000", "shard-00002", "shard-00004"]
        open_or_build(teacher, encoded, NEEDS, root=tmp_path / "two", ranks=Ranks(rank=1, world=2), **options)
        built_by_ranks = len(calls)
    finally:
        dist.destroy_process_group()
    one = open_or_build(teacher, encoded, NEEDS, root=tmp_path / "one", ranks=Ranks(), **options)
    assert built_by_ranks == 6  # 6 shards of up to 2 rows, one teacher batch each: every row once
    assert _files(tmp_path / "two") == _files(tmp_path / "one") and len(_files(tmp_path / "one")) > 6 * 3
    rows, width = list(range(11)), max(len(ids) for ids in encoded.input_ids)
    a, b = (cache.gather(rows, width=width, device=torch.device("cpu")) for cache in (one, two))
    assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["attention"][1], b["attention"][1])


def _files(root):
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_shards_are_1024_rows_and_no_more_than_1024_of_them():
    from edgekd.training.cache import shard_size

    assert [shard_size(rows) for rows in (1, 800, 1024 * 1024, 1024 * 1024 + 1, 2_000_000)] == [1024] * 3 + [1025, 1954]


def test_a_lazy_cache_runs_the_teacher_on_a_shard_when_training_first_reads_it(tmp_path):
    teacher = make_classifier("bert", layers=3)
    encoded = _encoded(rows=20)
    order = list(reversed(range(20)))  # the order training reads the rows in
    with torch.no_grad():
        expected = forward_outputs(teacher, collate(encoded, [19, 18, 17], pad_token_id=0), NEEDS)
    rows_seen = []
    teacher.register_forward_hook(lambda module, args, kwargs, output: rows_seen.append(len(kwargs["input_ids"])),
                                  with_kwargs=True)
    cache = open_or_build(teacher, encoded, NEEDS, root=tmp_path, device=torch.device("cpu"), pad_token_id=0,
                          ranks=Ranks(), batch_size=4, show_progress=False, order=order, lazy=True, shard_rows=8)
    assert not rows_seen and not list(cache.folder.glob("shard-*"))  # nothing before the first step
    width = max(len(ids) for ids in encoded.input_ids)
    first = cache.gather([19, 18, 17], width=width, device=torch.device("cpu"))  # the first batch
    assert sum(rows_seen) == 8 and [p.name for p in cache.folder.glob("shard-*")] == ["shard-00000"]
    torch.testing.assert_close(first["logits"], expected["logits"], rtol=2e-3, atol=2e-3)
    cache.gather(order[3:20], width=width, device=torch.device("cpu"))
    assert sum(rows_seen) == 20  # every row once, shard by shard
    reopened = open_or_build(teacher, encoded, NEEDS, root=tmp_path, device=torch.device("cpu"), pad_token_id=0,
                             ranks=Ranks(), batch_size=4, show_progress=False, order=order, lazy=True, shard_rows=8)
    assert torch.equal(reopened.gather([19, 18, 17], width=width, device=torch.device("cpu"))["logits"],
                       first["logits"]) and sum(rows_seen) == 20  # read back, the teacher idle


BUILD = """
import sys, time
import torch
sys.path.insert(0, {tests!r})
from conftest import make_classifier
from test_distill_cache import NEEDS, _encoded
from edgekd.training.cache import open_or_build
from edgekd.training.distributed import Ranks

torch.set_num_threads(1)
teacher, encoded = make_classifier("bert", layers=3), _encoded(rows=40)
rows = []
def slow(module, args, kwargs, output):
    rows.append(len(kwargs["input_ids"]))
    time.sleep({pause})
teacher.register_forward_hook(slow, with_kwargs=True)
order = [(7 * i) % 40 for i in range(40)]
cache = open_or_build(teacher, encoded, NEEDS, root={root!r}, device=torch.device("cpu"), pad_token_id=0,
                      ranks=Ranks(), batch_size=2, show_progress=False, order=order, lazy=True, shard_rows=4)
for start in range(0, 40, 4):  # as training reads it: a batch at a time
    cache.gather(order[start:start + 4], width=24, device=torch.device("cpu"))
print("rows", sum(rows))
"""


def _build_in_process(root, *, pause=0.0):
    import subprocess
    import sys
    from pathlib import Path

    code = BUILD.format(tests=str(Path(__file__).parent), root=str(root), pause=pause)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_cache_killed_mid_build_goes_on_from_its_last_shard_and_ends_byte_identical(tmp_path):
    import signal
    import time

    whole = _build_in_process(tmp_path / "whole")
    killed = _build_in_process(tmp_path / "killed", pause=0.25)  # slow: 0.25 s a teacher batch of 2 rows
    deadline = time.monotonic() + 120
    sealed = lambda: list((tmp_path / "killed").glob("*/shard-*/edgekd-checksums.json"))  # noqa: E731
    while len(sealed()) < 3 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    done = len(sealed())
    assert killed.returncode == -signal.SIGKILL and 3 <= done < 10, (done, killed.stderr.read())
    resumed = _build_in_process(tmp_path / "killed")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert out.split() == ["rows", str(40 - 4 * done)]  # the teacher ran only on the shards not sealed
    assert whole.communicate(timeout=300)[0].split() == ["rows", "40"]
    assert _files(tmp_path / "killed") == _files(tmp_path / "whole")  # no staging left, the same bytes


def _damage_overwrite(folder):
    logits = folder / "shard-00000" / "logits.npy"
    array = np.load(logits)
    np.save(logits, np.full_like(array, 7.0))  # a valid file with the wrong values
    return "logits.npy does not match its checksum"


def _damage_truncate(folder):
    path = folder / "shard-00000" / "hidden-0.npy"
    path.write_bytes(path.read_bytes()[:90])  # a header cut short
    return "hidden-0.npy does not match its checksum"


def _damage_remove(folder):
    (folder / "shard-00000" / "offsets-hidden-0.npy").unlink()
    return "offsets-hidden-0.npy is missing"


def _damage_old(folder):
    (folder / "shard-00000" / "edgekd-checksums.json").unlink()  # as a run killed while sealing leaves it
    return "has no edgekd-checksums.json"


def _damage_meta(folder):
    (folder / "meta.json").write_text("{")
    return "its meta.json is missing or unreadable"


@pytest.mark.parametrize("damage", [_damage_overwrite, _damage_truncate, _damage_remove, _damage_old, _damage_meta],
                         ids=["overwritten", "truncated", "missing", "no-checksums", "meta"])
def test_a_damaged_cache_is_reported_in_one_line_and_rebuilt_never_read(damage, tmp_path, capsys):
    # setup: a built cache, then damaged on disk
    teacher = make_classifier("bert", layers=3)
    encoded = _encoded()
    folder = _build(teacher, encoded, tmp_path).folder
    expected = _build(teacher, encoded, tmp_path).gather(list(range(20)), width=24, device=torch.device("cpu"))
    reason = damage(folder)
    capsys.readouterr()
    # execute: the next run opens it
    calls = _count_forwards(teacher)
    rebuilt = _build(teacher, encoded, tmp_path)
    # assert: said so in one line, rebuilt with the teacher, the values right again
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "is corrupt" in lines[0] and reason in lines[0] and "rebuilding" in lines[0]
    assert calls and rebuilt.folder == folder
    got = rebuilt.gather(list(range(20)), width=24, device=torch.device("cpu"))
    assert torch.equal(got["logits"], expected["logits"]) and torch.equal(got["hidden"][0], expected["hidden"][0])
    assert _build(teacher, encoded, tmp_path).folder == folder and not capsys.readouterr().err.strip()


def test_a_cache_over_text_read_a_batch_at_a_time_is_keyed_without_tokenising_it(tmp_path, monkeypatch):
    import edgekd.data as data
    from edgekd.data import Tokenised

    rows = make_rows(30)
    dataset = TextDataset(texts=[r["text"] for r in rows], labels=[None] * 30, label_names=["a", "b", "c"])
    tokenised = Tokenised(dataset, make_tokenizer(), max_length=24)
    calls = []
    encode_rows = data.encode
    monkeypatch.setattr(data, "encode", lambda *a, **k: calls.append(len(a[0])) or encode_rows(*a, **k))
    teacher = make_classifier("bert", layers=3)
    cache = open_or_build(teacher, tokenised, NEEDS, root=tmp_path, device=torch.device("cpu"), pad_token_id=0,
                          ranks=Ranks(), show_progress=False, order=list(range(30)), lazy=True, shard_rows=8)
    assert not calls  # keyed by the texts, the tokenizer's files and --max-length
    cache.gather([0, 1], width=24, device=torch.device("cpu"))
    assert sum(calls) == 8  # the first shard's rows, for the teacher; not all 30
    keys = {cache.folder.name}
    for changed in (Tokenised(dataset, make_tokenizer(), max_length=12),
                    Tokenised(dataset.subset(list(reversed(range(30)))), make_tokenizer(), max_length=24)):
        keys.add(open_or_build(teacher, changed, NEEDS, root=tmp_path, device=torch.device("cpu"), pad_token_id=0,
                               ranks=Ranks(), show_progress=False, order=list(range(30)), lazy=True,
                               shard_rows=8).folder.name)
    assert len(keys) == 3
