"""atomic_dir: a folder appears complete or not at all, and a killed writer's debris is swept."""

import os
import subprocess
import sys

import pytest

from edgekd.errors import UserError, _umask, atomic_dir, sweep_stale


def test_failure_inside_leaves_nothing_and_keeps_the_old_folder(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(final, overwrite=True) as staging:
            (staging / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (final / "old.txt").read_text() == "old"


def test_success_replaces_and_refuses_without_overwrite(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as staging:
        (staging / "a").write_text("1")
    with pytest.raises(UserError, match="already exists"):
        with atomic_dir(final):
            pass
    with atomic_dir(final, overwrite=True) as staging:
        (staging / "b").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert final.stat().st_mode & 0o777 == 0o777 & ~_umask()  # not mkdtemp's owner-only 0o700


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_debris_of_a_killed_writer_is_swept_and_a_moved_aside_folder_restored(tmp_path):
    final, dead = tmp_path / "out", _dead_pid()
    (tmp_path / f".out.partial-{dead}-abc").mkdir()
    old = tmp_path / f".out.old-{dead}"
    old.mkdir()
    (old / "model").write_text("complete")
    alive = tmp_path / f".out.partial-{os.getpid()}-xyz"
    alive.mkdir()
    sweep_stale(final)
    assert (final / "model").read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "out"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_written_file_has_the_permissions_a_plain_write_gives(teacher_dir, train_file, tmp_path, umask):
    from conftest import run_cli

    previous = os.umask(umask)
    try:
        result = run_cli("distill", "--teacher", teacher_dir, "--data", train_file, "--out", tmp_path / "s",
                         "--epochs", "1", "--max-length", "16", "--quiet", "--cache-dir", tmp_path / "cache")
        assert result.exit_code == 0, result.output
    finally:
        os.umask(previous)
    modes = {path.name: path.stat().st_mode & 0o777 for path in (tmp_path / "s").iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o666 & ~umask}, modes
