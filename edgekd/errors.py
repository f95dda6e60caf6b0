"""Errors a user can act on.

Stage functions raise `UserError` with one line that says what was wrong and what to
do; the CLI prints that line and exits non-zero without a traceback (unless --debug).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class UserError(Exception):
    """A problem with the user's input, reported as one actionable line."""

    exit_code = 1


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, for one-line errors (its type if empty)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class GateFailed(UserError):
    """A bench gate (accuracy drop, latency, size) failed: exit code 2 for CI jobs."""

    exit_code = 2


_held: dict[Path, int] = {}  # lock files this process holds, and how many times


@contextmanager
def exclusive(folder: Path, *, wait: bool = False, what: str = "output folder") -> Iterator[None]:
    """Hold the lock of `folder`: one writer per folder across this user's processes. Without
    `wait`, a folder another process holds is one line naming it and that process; with
    `wait`, this blocks until the other is done. A process may take a lock it already holds
    (the CLI takes it first, the stage again). Lock files live in the temporary folder, keyed
    by the folder's absolute path, so that taking one writes nothing where outputs go."""
    folder = Path(folder)
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:32]
    path = Path(tempfile.gettempdir()) / f"edgekd-locks-{os.getuid()}" / f"{key}.lock"
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    descriptor = _locked(path, folder=folder, wait=wait, what=what)
    _held[path] = 1
    try:
        yield
    finally:
        del _held[path]
        path.unlink(missing_ok=True)  # while still held: a waiter re-checks the file it locked
        os.close(descriptor)  # releases the lock


def _locked(path: Path, *, folder: Path, wait: bool, what: str) -> int:
    """An open descriptor of the lock file `path`, locked by this process."""
    while True:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise UserError(f"cannot create the lock file {path}: {error.strerror}; "
                            "set TMPDIR to a writable folder") from error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise UserError(f"{what} {folder} is being written by another edgekd process (pid {holder}); "
                            "wait for it to finish or choose another --out") from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(descriptor).st_ino:  # not removed by its last holder meanwhile
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, str(os.getpid()).encode(), 0)
            return descriptor
        os.close(descriptor)


def refuse_overlap(out: Path, inputs: dict[str, object], *, option: str = "--out") -> None:
    """One line when the output folder is or holds an input of the same run (a teacher, student,
    data or cache folder or file): replacing it, as --overwrite does, would delete what the run
    reads. Inputs that are not paths on disk (hub ids, data in memory) are passed over."""
    target = Path(out).expanduser().resolve()
    for name, value in inputs.items():
        if not isinstance(value, (str, os.PathLike)) or not Path(value).expanduser().exists():
            continue
        source = Path(value).expanduser().resolve()
        if source == target or target in source.parents:
            where = "is" if source == target else "holds"
            raise UserError(f"{option} {out} {where} the {name} {value}; an output folder must not overlap what "
                            f"the run reads: choose another {option}")


def first_process() -> bool:
    """Rank 0 under torchrun (or no torchrun): the process that writes outputs."""
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def atomic_dir(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; rename it to `final` only on success.

    A crash or an error leaves no half-written `final` behind, and an existing `final`
    is only replaced once the new one is complete. The folder's lock is held throughout:
    a second writer of the same folder fails at once instead of replacing the first's.
    """
    with exclusive(final):
        with _atomic_dir(Path(final), overwrite=overwrite) as staging:
            yield staging


@contextmanager
def _atomic_dir(final: Path, *, overwrite: bool) -> Iterator[Path]:
    if final.exists() and not overwrite and any(final.iterdir()):
        raise UserError(f"output folder {final} already exists and is not empty; "
                        "choose another --out or pass --overwrite")
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(final)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-{os.getpid()}-", dir=parent))
    except OSError as error:
        raise UserError(f"cannot write to {parent}: {error.strerror}; "
                        "choose a writable --out") from error
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes owner-only folders; outputs are ordinary folders
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _plain_permissions(staging)
    if final.exists():
        trash = parent / f".{final.name}.old-{os.getpid()}"
        final.rename(trash)
        staging.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        staging.rename(final)


def _plain_permissions(folder: Path) -> None:
    """Files as a plain write would leave them (0666 less the umask): some writers (the
    safetensors files of save_pretrained) create theirs owner-only."""
    mode = 0o666 & ~_umask()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)


def sweep_stale(final: Path) -> None:
    """Clean up after a process that was killed inside `atomic_dir` for `final`.

    Its staging folder (`.NAME.partial-PID-*`) is deleted; if it died between moving the
    old `final` aside (`.NAME.old-PID`) and moving the new one in, the old one is put back.
    Folders of processes that are still running are left alone.
    """
    for leftover in sorted(final.parent.glob(f".{final.name}.*-*")):
        kind, _, rest = leftover.name[len(final.name) + 2:].partition("-")
        pid = rest.split("-")[0]
        if kind not in ("partial", "old") or not pid.isdigit() or process_alive(int(pid)):
            continue
        if kind == "old" and not final.exists():
            leftover.rename(final)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temporary_name(path: Path) -> Path:
    """Where this process writes a file before renaming it to `path`. A killed writer's
    temporary (`.NAME.tmp-PID` of a process no longer running) is removed first."""
    path = Path(path)
    for leftover in path.parent.glob(f".{path.name}.tmp-*"):
        pid = leftover.name.rpartition("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            leftover.unlink(missing_ok=True)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file under a temporary name, then rename it into place."""
    path = Path(path)
    temporary = temporary_name(path)
    try:
        temporary.write_text(text)
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)  # a full disk leaves no half-written temporary behind
        raise
