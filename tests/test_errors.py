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


HOLDER = """
import sys, time
from pathlib import Path
from edgekd.errors import exclusive
with exclusive(Path(sys.argv[1]), wait=True):
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _hold(folder, seconds: float, tmp_path):
    """Another process holding `folder`'s lock for `seconds`; returns once it holds it."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    process = subprocess.Popen([sys.executable, str(script), str(folder), str(seconds)], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "holding"
    return process


def test_a_second_writer_of_an_output_folder_fails_at_once_naming_the_first(teacher_dir, train_file, tmp_path):
    from conftest import assert_clean_error, run_cli

    out = tmp_path / "student"
    holder = _hold(out, 30, tmp_path)
    try:
        result = run_cli("distill", "--teacher", teacher_dir, "--data", train_file, "--out", out, "--epochs", "1",
                         "--max-length", "16", "--quiet", "--cache-dir", tmp_path / "cache")
        assert_clean_error(result, f"output folder {out} is being written by another edgekd process "
                                   f"\\(pid {holder.pid}\\); wait for it to finish or choose another --out")
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its holder: the same command now runs, and writes nothing beside the output
    result = run_cli("distill", "--teacher", teacher_dir, "--data", train_file, "--out", out, "--epochs", "1",
                     "--max-length", "16", "--quiet", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bench_and_demo_refuse_a_report_folder_another_run_is_writing(teacher_dir, student_dir, test_file,
                                                                        tmp_path):
    from conftest import assert_clean_error, run_cli

    out = tmp_path / "report"
    holder = _hold(out, 30, tmp_path)
    try:
        bench = run_cli("bench", "--teacher", teacher_dir, "--student", student_dir, "--data", test_file,
                        "--out", out, "--quiet")
        assert_clean_error(bench, f"bench report folder {out} is being written by another edgekd process "
                                  f"\\(pid {holder.pid}\\)")
        demo = run_cli("demo", "--out", out, "--quiet")
        assert_clean_error(demo, f"demo folder {out} is being written by another edgekd process")
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_second_builder_of_a_cache_waits_for_the_first_then_uses_its_cache(tmp_path):
    import shutil
    import threading
    import time

    import numpy as np

    from edgekd.training.cache import Shards

    builds = []

    def compute(rows):
        builds.append(rows)
        yield [{"values": np.full((1, 2), row, dtype=np.float16)} for row in rows]

    def shards(folder):
        return Shards(folder, order=np.arange(6), shard_rows=3, compute=compute, what="teacher cache", unwritable="")

    shards(tmp_path / "elsewhere").ensure([0])  # what the first builder will have written
    builds.clear()
    final = tmp_path / "cache" / "key"
    holder = _hold(final / "shard-00000", 1.5, tmp_path)  # the first builder, holding shard 0
    finishing = threading.Timer(0.5, lambda: shutil.copytree(tmp_path / "elsewhere" / "shard-00000",
                                                              final / "shard-00000"))
    finishing.start()
    started = time.monotonic()
    second = shards(final)
    assert [v.tolist() for v in second.rows("values", [2, 0])] == [[[2, 2]], [[0, 0]]]
    assert time.monotonic() - started >= 1.0  # it waited for the other builder
    holder.wait()
    finishing.join()
    assert not builds  # and read the shard it wrote, never running the teacher on it
    second.rows("values", [4])
    assert builds == [[3, 4, 5]] and sorted(p.name for p in final.iterdir()) == ["shard-00000", "shard-00001"]
