"""Scale: does `edgekd distill --max-steps 50` cost the same on 20k, 200k and 2M rows?

    python benchmarks/scale.py [--sizes 20000 200000 2000000 --repeats 2]

Data: synthetic CSVs of short distinct texts made from the demo corpus (two BBC sentences'
first words joined, labelled with the first sentence's class), one file per size. Teacher: the
text demo's teacher (MiniLM-L6 fine-tuned on BBC News). Each run is the real command line,
`python -m edgekd distill --max-steps 50 --batch-size 16` with a 2-layer student, in its own
process, one process at a time; sizes are interleaved within each repeat. Each repeat runs every
size twice:

- cold: an empty cache folder (the CSV is converted to Arrow, the teacher runs over the
  validation rows and over the 800 training rows the 50 steps use);
- warm: the same cache again (what a second run, or a run after an interrupt, pays).

Measured per run: peak RSS of the process (its VmHWM, read every 20 ms until it exits), and the
peak of its anonymous memory (RssAnon: RSS less the pages of files it maps, such as the Arrow
data; those are page cache the kernel can take back), seconds from the process start to
the first optimiser step (the first line of metrics.jsonl appearing), and the loop's samples/s
over the 50 steps (metrics.jsonl's last line). Medians over repeats. Goals (issue #28), against
the smallest size: peak RSS at the largest <= 1.25x; time to first step <= 1.5x and < 60 s;
samples/s (warm) >= 0.9x.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgekd.benchmarking.machine import machine_info  # CPU model and flags, recorded with every figure
from edgekd.config import cache_dir
from edgekd.data import demo_splits
from edgekd.tasks.text_demo import build_teacher

RESULT = Path(__file__).resolve().parent / "results" / "scale.json"
KEYS = ("peak_rss_mb", "peak_anonymous_mb", "first_step_seconds", "samples_per_second")
GOALS = {"peak_rss": 1.25, "first_step": 1.5, "first_step_seconds": 60.0, "samples_per_second": 0.9}


def write_rows(path: Path, rows: int, seed: int = 0) -> None:
    """`rows` distinct short texts: the first words of two demo sentences, joined."""
    corpus = demo_splits()["train"]
    sentences = [(" ".join(part.split()[:8]), label) for text, label in zip(corpus.texts, corpus.labels)
                 for part in text.split(". ") if len(part.split()) >= 4]
    sentences = list(dict(sentences).items())  # distinct sentence starts
    names, generator, seen = corpus.label_names, random.Random(seed), set()
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        written = 0
        while written < rows:
            a, b = generator.randrange(len(sentences)), generator.randrange(len(sentences))
            if (a, b) in seen:
                continue
            seen.add((a, b))
            writer.writerow([f"{sentences[a][0]}; {sentences[b][0]}", names[sentences[a][1]]])
            written += 1


def memory_kb(pid: int, field: str = "VmHWM") -> int:
    """A line of /proc/<pid>/status, in kB: VmHWM, the process's peak resident memory so far (not
    wait4's ru_maxrss: a child forked from this process counts this process's memory at the fork
    in it), or RssAnon, its resident memory now that is not pages of files it maps."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # already gone
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith(f"{field}:")), 0)


def one_run(data: Path, teacher: Path, *, cache: Path, work: Path) -> dict:
    """One `edgekd distill` process: its peak RSS, time to the first step and loop samples/s."""
    out = work / f"student-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "edgekd", "distill", "--teacher", str(teacher), "--data", str(data),
               "--out", str(out), "--student-layers", "0,5", "--max-steps", "50", "--batch-size", "16",
               "--max-length", "64", "--device", "cpu", "--checkpoint-every", "0", "--quiet"]
    environment = {**os.environ, "EDGEKD_CACHE": str(cache)}
    log = work / f"{out.name}.stderr"
    started = time.perf_counter()
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=stderr)
    first_step, peak_kb, anonymous_kb = None, 0, 0
    while True:  # the first metrics line appears when the first step is done
        peak_kb = max(peak_kb, memory_kb(process.pid))
        anonymous_kb = max(anonymous_kb, memory_kb(process.pid, "RssAnon"))
        pid, status, _ = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if first_step is None and any(path.stat().st_size for path in work.glob(f".{out.name}.partial-*/metrics.jsonl")):
            first_step = time.perf_counter() - started
        time.sleep(0.02)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"distill failed on {data}: {log.read_text()[-2000:]}")
    log.unlink()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [record for record in records if "loss" in record]
    shutil.rmtree(out)
    return {"peak_rss_mb": peak_kb / 1024, "peak_anonymous_mb": anonymous_kb / 1024, "first_step_seconds": first_step,
            "seconds": time.perf_counter() - started, "steps": len(steps),
            "samples_per_second": steps[-1]["samples_per_second"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000, 2_000_000])
    parser.add_argument("--repeats", type=int, default=2, help="cold and warm runs of every size, interleaved")
    parser.add_argument("--work", type=Path, default=None, help="folder for the CSVs and caches (default: a temporary one)")
    parser.add_argument("--note", default="", help="free text stored with the result (e.g. shared machine)")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    teacher = build_teacher(demo_splits(), cache=cache_dir(), show_progress=False)
    work = args.work or Path(tempfile.mkdtemp(prefix="edgekd-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    files = {}
    for size in args.sizes:
        files[size] = work / f"rows-{size}.csv"
        if not files[size].exists():
            write_rows(files[size], size)
    runs = {size: {"cold": [], "warm": []} for size in args.sizes}
    for repeat in range(args.repeats):
        for size in args.sizes:
            cache = work / f"cache-{size}-{repeat}"
            shutil.rmtree(cache, ignore_errors=True)
            for mode in ("cold", "warm"):
                runs[size][mode].append(one_run(files[size], teacher, cache=cache, work=work))
                print(size, mode, runs[size][mode][-1], flush=True)
            shutil.rmtree(cache, ignore_errors=True)

    def median(size: int, mode: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[size][mode])

    small, large = args.sizes[0], args.sizes[-1]
    table = {size: {f"{mode}_{key}": median(size, mode, key) for mode in ("cold", "warm")
                    for key in KEYS}
             for size in args.sizes}
    ratios = {f"{mode}_{key}": table[large][f"{mode}_{key}"] / table[small][f"{mode}_{key}"]
              for mode in ("cold", "warm") for key in KEYS}
    goals = {"peak_rss": all(ratios[f"{m}_peak_rss_mb"] <= GOALS["peak_rss"] for m in ("cold", "warm")),
             "first_step": all(ratios[f"{m}_first_step_seconds"] <= GOALS["first_step"]
                               and table[large][f"{m}_first_step_seconds"] < GOALS["first_step_seconds"]
                               for m in ("cold", "warm")),
             "samples_per_second": ratios["warm_samples_per_second"] >= GOALS["samples_per_second"]}
    result = {"benchmark": "scale", "sizes": args.sizes, "file_mb": {size: files[size].stat().st_size / 2**20 for size in args.sizes},
              "table": table, "ratios_largest_to_smallest": ratios, "goals": GOALS, "met": goals, "runs": runs,
              "machine": machine_info(), "platform": platform.platform(), "note": args.note}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"table": table, "ratios": ratios, "met": goals}, indent=2))


if __name__ == "__main__":
    main()
