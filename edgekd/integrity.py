"""Caches that cannot lie: what edgekd reads back from its cache folder is checked first.

Every cache records the SHA-256 of its contents when it is built and checks them when it is
opened. A folder cache (teacher outputs, a fine-tuned demo teacher, a dequantised GGUF model)
lists the digest of every file in a record file; a one-file cache (the machine's matmul
peak) stores the digest of its payload beside it. A cache whose record is missing or
unreadable, or a file that is missing, truncated or changed, is said so in one line
("... is corrupt (why); rebuilding") and rebuilt, never read.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from edgekd.errors import atomic_write_text
from edgekd.progress import console

RECORD = "edgekd-checksums.json"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checksums(folder: Path, *, record: str = RECORD) -> dict[str, str]:
    """SHA-256 of every file below `folder` but the record file, by relative path."""
    folder = Path(folder)
    return {path.relative_to(folder).as_posix(): file_digest(path)
            for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != record)}


def corruption(folder: Path, *, record: str = RECORD) -> str | None:
    """Why the cache in `folder` cannot be trusted, or None: its record file must be readable
    and every file it lists present with the digest recorded when it was built."""
    try:
        recorded = json.loads((Path(folder) / record).read_text())["checksums"]
        if not isinstance(recorded, dict):
            raise TypeError
    except FileNotFoundError:
        return f"it has no {record}: it was not finished or an older edgekd built it"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {record} is unreadable or has no checksums"
    found = checksums(folder, record=record)
    for name, digest in recorded.items():
        if name not in found:
            return f"{name} is missing"
        if found[name] != digest:
            return f"{name} does not match its checksum"
    return None


def seal(folder: Path) -> None:
    """Record the checksums of every file in a finished cache folder (the last file written)."""
    atomic_write_text(Path(folder) / RECORD, json.dumps({"checksums": checksums(folder)}, indent=2) + "\n")


# Folders whose checksums matched in this process, with the size and modification time of
# each of their files then: opened again unchanged (a .gguf teacher is opened several times
# by one bench), they are not hashed again.
_verified: dict[Path, tuple] = {}


def _stamp(folder: Path) -> tuple:
    return tuple(sorted((path.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns)
                        for path in folder.rglob("*") if path.is_file() for stat in [path.stat()]))


def trusted(folder: Path, *, what: str, record: str = RECORD) -> bool:
    """True when `folder` holds a cache whose checksums match. A cache that fails them is
    said so in one line and removed, so that the caller rebuilds it; none is False."""
    folder = Path(folder)
    if not folder.exists():
        return False
    stamp = _stamp(folder)
    if _verified.get(folder.resolve()) == stamp:
        return True
    reason = corruption(folder, record=record)
    if reason is None:
        _verified[folder.resolve()] = stamp
        return True
    console.print(f"{what} {folder} is corrupt ({reason}); rebuilding", soft_wrap=True)
    shutil.rmtree(folder, ignore_errors=True)
    return False


def payload_digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def read_sealed_json(path: Path, *, what: str) -> dict:
    """The payload of a one-file JSON cache written by `write_sealed_json`; {} when there is
    none, or (said in one line) when it is unreadable or fails its checksum."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        stored = json.loads(path.read_text())
        payload, digest = stored["payload"], stored["sha256"]
        if payload_digest(payload) != digest:
            reason = "its contents do not match their checksum"
        elif not isinstance(payload, dict):
            reason = "it holds no entries"
        else:
            return payload
    except (OSError, ValueError, KeyError, TypeError):
        reason = "it is unreadable or has no checksum"
    console.print(f"{what} {path} is corrupt ({reason}); measuring again", soft_wrap=True)
    path.unlink(missing_ok=True)
    return {}


def write_sealed_json(path: Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"payload": payload, "sha256": payload_digest(payload)}, indent=2) + "\n")
