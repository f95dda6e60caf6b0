"""The architecture matrix (tests/matrix.py): every model type in transformers' sequence
classification, causal-LM and image classification mappings, built tiny, through distill (layer
cut and --student-config), export onnx-int8 and bench. Each step passes or refuses by name in one
line; none ends in a traceback. The published table, docs/architectures.md, must be what this
run finds.

The families run in two worker processes side by side (a crash in one family's native code
cannot take the test session with it); each family's test reads its outcome."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from matrix import STEPS, TABLE, TASKS, families, render, statuses

CASES = [(task, family) for task in TASKS for family in families(task)]
WORKERS = 2


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict:
    """Every selected family's outcome, from the worker processes."""
    chosen = [item.callspec.params for item in request.session.items
              if getattr(item, "originalname", "") == "test_every_family_passes_or_is_refused_by_name"]
    folder = tmp_path_factory.mktemp("matrix")
    found: dict = {}
    for task in TASKS:
        names = sorted({params["family"] for params in chosen if params["task"] == task})
        if not names:
            continue
        logs = [(folder / f"{task}-{k}.log").open("w") for k in range(WORKERS)]
        workers = [subprocess.Popen([sys.executable, str(Path(__file__).with_name("matrix.py")), "--task", task,
                                     "--only", *names, "--shard", f"{k}/{WORKERS}",
                                     "--results", str(folder / f"{task}-{k}.jsonl")],
                                    stdout=subprocess.DEVNULL, stderr=logs[k])
                   for k in range(WORKERS)]
        for k, worker in enumerate(workers):
            worker.wait()
            logs[k].close()
            errors = (folder / f"{task}-{k}.log").read_text(errors="replace")
            results = folder / f"{task}-{k}.jsonl"
            for line in results.read_text().splitlines() if results.exists() else []:
                outcome = json.loads(line)
                found[outcome["task"], outcome["family"]] = outcome
            found.setdefault(("worker", f"{task}-{k}"), {"returncode": worker.returncode, "stderr": errors[-3000:]})
    return found


@pytest.mark.slow
@pytest.mark.parametrize("task, family", CASES, ids=[f"{task}:{family}" for task, family in CASES])
def test_every_family_passes_or_is_refused_by_name(task, family, outcomes):
    outcome = outcomes.get((task, family))
    if outcome is None:
        workers = {name: info for (kind, name), info in outcomes.items() if kind == "worker"}
        pytest.fail(f"{family} ({task}) has no outcome: a worker stopped: {workers}")
    broken = {step: outcome[step] for step in STEPS if outcome[step].startswith("fail")}
    assert not broken, f"{family} ({task}): {broken}"


@pytest.mark.slow
def test_the_published_table_is_what_the_matrix_finds(outcomes):
    found = [outcome for (kind, _), outcome in outcomes.items() if kind != "worker"]
    if len(found) < len(CASES):
        pytest.skip("only part of the matrix ran in this session")
    published, now = statuses(TABLE.read_text()), statuses(render(found))
    differing = {key: (published.get(key), now.get(key)) for key in set(published) | set(now)
                 if published.get(key) != now.get(key)}
    assert not differing, (f"docs/architectures.md is not what the matrix finds ({differing}); regenerate it with "
                           "python tests/matrix.py --write")
