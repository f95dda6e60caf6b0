"""The int8 keep-float search, one for every task: which nodes stay in float so that a
quantised model keeps its budget.

A task supplies three things:

    rank   the candidate nodes, most damaged by int8 first, each with its score (a
           classifier: the mean logit error with only that node quantised; a causal LM: each
           MatMul's relative output error on calibration text); asked for only when
           quantising everything misses the budget
    build  write the model with the given nodes kept float
    judge  measure the model just built: whether it keeps the budget, and the measurement

The search builds everything in int8 first. If that misses the budget, it keeps the k
worst-ranked nodes float for a doubling k (from ceil(n / 32), so that a large graph does
not start at one node), up to `max_kept`, then bisects between the largest k that missed
and the smallest that held, to within max(1, n / 64) nodes. A budget the search cannot
meet at `max_kept` is reported as failed, with that model built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

Measurement = TypeVar("Measurement")
INITIAL_FRACTION = 1 / 32  # the first k tried, as a share of the candidates
BISECTION_FRACTION = 1 / 64  # bisection stops this close (in candidates) to the smallest passing k


@dataclass
class KeepFloat(Generic[Measurement]):
    """What the search measured and chose."""

    kept: list[str]  # nodes kept float, worst first
    passed: bool  # whether the model built last (with `kept`) keeps the budget
    measurement: Measurement  # of that model
    probes: list[tuple[int, Measurement]] = field(default_factory=list)  # (nodes kept, measurement) in order
    ranking: list[tuple[str, float]] = field(default_factory=list)  # (node, score), worst first; [] if not ranked

    @property
    def first(self) -> Measurement:
        """The measurement with every candidate in int8."""
        return self.probes[0][1]


def keep_float_search(*, rank: Callable[[], list[tuple[str, float]]], build: Callable[[list[str]], None],
                      judge: Callable[[], tuple[bool, Measurement]], max_kept: int) -> KeepFloat[Measurement]:
    """The fewest worst-ranked nodes kept float for which `judge` passes (module docstring)."""
    results: dict[int, tuple[bool, Measurement]] = {}
    probes: list[tuple[int, Measurement]] = []
    ranking: list[tuple[str, float]] = []
    built = {"kept": -1}

    def passes(kept: int) -> bool:
        if kept not in results:
            build([name for name, _ in ranking[:kept]])
            built["kept"] = kept
            results[kept] = judge()
            probes.append((kept, results[kept][1]))
        return results[kept][0]

    chosen = 0
    if not passes(0) and max_kept > 0:
        ranking = rank()
        limit = min(max_kept, len(ranking))
        failed, passing = 0, None
        kept = max(1, math.ceil(INITIAL_FRACTION * len(ranking)))
        while passing is None and failed < limit:
            kept = min(max(kept, failed + 1), limit)
            if passes(kept):
                passing = kept
            else:
                failed, kept = kept, kept * 2
        if passing is None:
            chosen = failed
        else:
            while passing - failed > max(1, int(BISECTION_FRACTION * len(ranking))):
                middle = (failed + passing) // 2
                failed, passing = (failed, middle) if passes(middle) else (middle, passing)
            chosen = passing
    if built["kept"] != chosen:  # the file on disk is the last probe's: build the chosen one
        build([name for name, _ in ranking[:chosen]])
    passed, measurement = results[chosen]
    return KeepFloat(kept=[name for name, _ in ranking[:chosen]], passed=passed, measurement=measurement,
                     probes=probes, ranking=ranking)
