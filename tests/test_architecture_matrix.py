"""The architecture matrix (tests/matrix.py): every model type in transformers' sequence
classification, causal-LM and image classification mappings, built tiny, through distill (layer
cut and --student-config), export onnx-int8 and bench. Each step passes or refuses by name in one
line; none ends in a traceback. The published table, docs/architectures.md, must be what this
run finds."""

from __future__ import annotations

import pytest

from matrix import STEPS, TABLE, TASKS, families, render, run_family

CASES = [(task, family) for task in TASKS for family in families(task)]
OUTCOMES: dict = {}


@pytest.mark.slow
@pytest.mark.parametrize("task, family", CASES, ids=[f"{task}:{family}" for task, family in CASES])
def test_every_family_passes_or_is_refused_by_name(task, family, tmp_path):
    outcome = run_family(family, task, tmp_path)
    OUTCOMES[task, family] = outcome
    broken = {step: outcome[step] for step in STEPS if outcome[step].startswith("fail")}
    assert not broken, f"{family} ({task}): {broken}"


@pytest.mark.slow
def test_the_published_table_is_what_the_matrix_finds():
    if len(OUTCOMES) < len(CASES):
        pytest.skip("only part of the matrix ran in this session")
    expected = render(list(OUTCOMES.values()))
    assert TABLE.read_text() == expected, ("docs/architectures.md is not what the matrix finds; regenerate it "
                                           "with python tests/matrix.py --write")
