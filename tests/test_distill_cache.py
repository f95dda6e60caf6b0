"""The teacher cache: stored outputs equal the teacher's, reused when nothing changed,
rebuilt when weights, data or tokenisation change."""

import json

import numpy as np
import pytest
import torch

from conftest import make_classifier, make_rows, make_tokenizer
from edgekd.data import TextDataset, batches, encode
from edgekd.training.cache import TeacherCache, open_or_build
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


def test_a_cache_of_two_parts_reads_like_one(tmp_path):
    # What two torchrun ranks write (rows 0, 2, 4, ... and 1, 3, 5, ...) reads back in row order.
    from edgekd.training.cache import FORMAT_VERSION, _build_part, cache_key

    teacher = make_classifier("bert", layers=3)
    encoded = _encoded(rows=11)
    staging = tmp_path / ".staging"
    _, lengths = cache_key(teacher, encoded, NEEDS)
    for part in (0, 1):
        _build_part(teacher, encoded, NEEDS, lengths=lengths, folder=staging / f"part-{part}", part=part, parts=2,
                    device=torch.device("cpu"), pad_token_id=0, batch_size=4, description="", show_progress=False)
    meta = {"rows": 11, "parts": 2, "needs": NEEDS.describe(), "heads": {"1": 4}, "format": FORMAT_VERSION}
    (staging / "meta.json").write_text(json.dumps(meta))
    staging.rename(tmp_path / "two")
    one = _build(teacher, encoded, tmp_path / "one")
    two = TeacherCache(tmp_path / "two")
    rows = list(range(11))
    width = max(len(ids) for ids in encoded.input_ids)
    cpu = torch.device("cpu")
    a, b = one.gather(rows, width=width, device=cpu), two.gather(rows, width=width, device=cpu)
    assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["attention"][1], b["attention"][1])
    assert json.loads((tmp_path / "two" / "meta.json").read_text())["parts"] == 2


def _damage_overwrite(folder):
    logits = folder / "part-0" / "logits.npy"
    array = np.load(logits)
    np.save(logits, np.full_like(array, 7.0))  # a valid file with the wrong values
    return "part-0/logits.npy does not match its checksum"


def _damage_truncate(folder):
    path = folder / "part-0" / "hidden-0.npy"
    path.write_bytes(path.read_bytes()[:90])  # a header cut short
    return "part-0/hidden-0.npy does not match its checksum"


def _damage_remove(folder):
    (folder / "part-0" / "offsets.npy").unlink()
    return "part-0/offsets.npy is missing"


def _damage_old(folder):
    meta = json.loads((folder / "meta.json").read_text())
    del meta["checksums"]  # as an older edgekd wrote it
    (folder / "meta.json").write_text(json.dumps(meta))
    return "has no checksums"


@pytest.mark.parametrize("damage", [_damage_overwrite, _damage_truncate, _damage_remove, _damage_old],
                         ids=["overwritten", "truncated", "missing", "no-checksums"])
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
