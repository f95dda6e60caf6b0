"""Kill/resume soak: a distillation of thousands of steps, SIGKILLed at random moments many
times in a row, resumed each time with --resume, must end bit-identical to an uninterrupted run.

    python benchmarks/soak_resume.py [--kills 30] [--steps 3000] [--seed 0]

A tiny random BERT teacher and keyword-labelled texts are built in-process (nothing is
downloaded). The uninterrupted run is timed first; every soak attempt is then killed
(SIGKILL) at a random moment between its start and a little past the uninterrupted run's start-up
(first checkpoint) plus twice its share of the training time, so kills land in start-up, in the
teacher-cache build, between steps and inside checkpoint writes, and many fit in one run. After
the last kill the run is resumed to the end and its student compared tensor by tensor with
the uninterrupted one. Written to benchmarks/results/soak_resume.json: kills survived, the
step each kill landed at, and whether the students are identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "soak_resume.json"
WORDS = {"negative": ["awful", "bad", "poor"], "neutral": ["table", "chair", "door"],
         "positive": ["great", "good", "fine"]}
FILLER = [f"w{i}" for i in range(60)]


def build_inputs(work: Path, *, rows: int, seed: int) -> tuple[Path, Path]:
    """A tiny 4-layer BERT teacher folder and a JSONL training file."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + FILLER + [w for ws in WORDS.values() for w in ws]
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocabulary), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3,
                        id2label=dict(enumerate(WORDS)), label2id={n: i for i, n in enumerate(WORDS)})
    teacher = work / "teacher"
    BertForSequenceClassification(config).save_pretrained(teacher)
    BertTokenizer(vocab={w: i for i, w in enumerate(vocabulary)}).save_pretrained(teacher)
    generator = random.Random(seed)
    lines = []
    for _ in range(rows):
        label = generator.choice(list(WORDS))
        words = generator.sample(FILLER, generator.randint(3, 12))
        words.insert(generator.randrange(len(words) + 1), generator.choice(WORDS[label]))
        lines.append(json.dumps({"text": " ".join(words), "label": label}))
    data = work / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    return teacher, data


def command(teacher: Path, data: Path, out: Path, cache: Path, *, steps: int, resume: bool) -> list[str]:
    return [sys.executable, "-m", "edgekd", "distill", "--teacher", str(teacher), "--data", str(data),
            "--out", str(out), "--student-layers", "2", "--max-steps", str(steps), "--batch-size", "8",
            "--max-length", "16", "--lr", "1e-3", "--checkpoint-every", "25", "--hidden-mse-weight", "1",
            "--device", "cpu", "--cache-dir", str(cache), "--quiet", *(["--resume"] if resume else [])]


def weights_digest(folder: Path) -> dict[str, str]:
    from safetensors.numpy import load_file

    return {name: hashlib.sha256(array.tobytes()).hexdigest()
            for name, array in sorted(load_file(folder / "model.safetensors").items())}


def checkpoint_step(out: Path) -> int | None:
    from edgekd.training import checkpoint

    try:
        state = checkpoint.load(checkpoint.checkpoint_dir(out))
    except Exception:  # a refused checkpoint counts as none
        return None
    return None if state is None else int(state["step"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=30, help="SIGKILLs in a row before the run may finish")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    from edgekd.benchmarking.machine import machine_info

    work = Path(tempfile.mkdtemp(prefix="edgekd-soak-"))
    env = {**os.environ, "TMPDIR": str(work)}
    teacher, data = build_inputs(work, rows=args.rows, seed=0)
    started, startup = time.perf_counter(), None
    whole = subprocess.Popen(command(teacher, data, work / "whole", work / "cache-whole", steps=args.steps,
                                     resume=False), env=env, stdout=subprocess.DEVNULL)
    from edgekd.training.checkpoint import FILE_NAME, checkpoint_dir

    while whole.poll() is None:
        if startup is None and (checkpoint_dir(work / "whole") / FILE_NAME).exists():
            startup = time.perf_counter() - started  # start-up, teacher cache and the first 25 steps
        time.sleep(0.05)
    if whole.returncode != 0:
        raise SystemExit(f"the uninterrupted run failed with exit {whole.returncode}")
    whole_seconds = time.perf_counter() - started
    startup = startup or whole_seconds
    print(f"uninterrupted: {args.steps} steps in {whole_seconds:.1f} s (first checkpoint after {startup:.1f} s)",
          flush=True)
    # kill moments: from the first instant to a little past start-up plus a share of the training, so that
    # kills land in start-up, in the cache build and throughout training, and `--kills` of them fit in one run
    latest = startup + 2 * (whole_seconds - startup) / max(args.kills, 1)

    generator = random.Random(args.seed)
    out, cache, kills, attempts = work / "soak", work / "cache-soak", [], 0
    while True:
        attempts += 1
        resume = attempts > 1
        process = subprocess.Popen(command(teacher, data, out, cache, steps=args.steps, resume=resume),
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if len(kills) < args.kills:
            delay = generator.uniform(0.0, latest)
            try:
                process.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                before = checkpoint_step(out)
                process.send_signal(signal.SIGKILL)
                process.wait()
                finished = (out / "model.safetensors").is_file()  # killed after writing its student, while exiting
                kills.append({"after_seconds": round(delay, 2), "checkpoint_step_before": before,
                              "checkpoint_step_after": checkpoint_step(out), "student_already_written": finished})
                print(f"kill {len(kills)} at {delay:.1f} s; checkpoint at step {kills[-1]['checkpoint_step_after']}"
                      f"{'; the student was already written' if finished else ''}", flush=True)
                if finished:
                    break
                continue
        _, stderr = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"attempt {attempts} failed with exit {process.returncode}: {stderr.strip()[-500:]}")
        if (out / "model.safetensors").is_file():
            break
    identical = weights_digest(work / "whole") == weights_digest(out)
    debris = sorted(p.name for p in work.iterdir() if p.name.startswith((".soak", "edgekd-memory-")))
    result = {"benchmark": "soak_resume", "date": time.strftime("%Y-%m-%d"), "steps": args.steps,
              "kills_survived": len(kills), "attempts": attempts, "identical_to_uninterrupted": identical,
              "uninterrupted_seconds": whole_seconds, "kills": kills, "debris_left": debris,
              "kills_with_a_checkpoint_on_disk": sum(k["checkpoint_step_before"] is not None for k in kills),
              "machine": machine_info(), "python": platform.python_version(), "note": args.note}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("kills_survived", "attempts", "identical_to_uninterrupted",
                                             "kills_with_a_checkpoint_on_disk", "debris_left")}))
    if not identical:
        raise SystemExit("the resumed student differs from the uninterrupted one")


if __name__ == "__main__":
    main()
