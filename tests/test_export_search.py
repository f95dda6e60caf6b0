"""The keep-float search every task's int8 shares, on synthetic rankings: it finds the
fewest worst-ranked nodes that keep the budget, ranks only when it must, and leaves the
chosen model built."""

from __future__ import annotations

import pytest

from edgekd.exporting.search import keep_float_search


def _search(needed: int, *, candidates: int = 40, max_kept: int = 40):
    """A model keeps its budget once its `needed` worst nodes are float."""
    ranking = [(f"node{i}", float(candidates - i)) for i in range(candidates)]
    builds, ranked = [], []

    def rank():
        ranked.append(True)
        return ranking

    def judge():
        kept = len(builds[-1])
        return kept >= needed, {"kept": kept}

    result = keep_float_search(rank=rank, build=builds.append, judge=judge, max_kept=max_kept)
    return result, builds, ranked


@pytest.mark.parametrize("needed", [1, 2, 3, 7, 13, 30, 40])
def test_finds_the_fewest_nodes_to_keep_float(needed):
    result, builds, _ = _search(needed)
    assert result.passed and len(result.kept) == needed  # 40 candidates: bisection to 1 node
    assert result.kept == [f"node{i}" for i in range(needed)]  # the worst-ranked ones
    assert builds[-1] == result.kept  # the model left on disk is the chosen one
    assert result.first == {"kept": 0} and result.probes[0][0] == 0
    assert len(result.probes) <= 2 + 2 * 6  # k = 0, a doubling run and a bisection: logarithmic


def test_ranks_only_when_everything_in_int8_misses():
    result, builds, ranked = _search(0)
    assert result.passed and result.kept == [] and builds == [[]] and not ranked and result.ranking == []


def test_a_budget_it_cannot_meet_is_a_failure_with_the_most_it_may_keep():
    result, builds, _ = _search(20, max_kept=12)
    assert not result.passed and len(result.kept) == 12 and builds[-1] == result.kept
    result, _, _ = _search(5, max_kept=0)
    assert not result.passed and result.kept == []


def test_large_graphs_start_at_a_share_of_the_candidates_and_stop_within_a_64th():
    result, _, _ = _search(70, candidates=640, max_kept=640)
    assert [k for k, _ in result.probes][:2] == [0, 20]  # ceil(640 / 32)
    assert result.passed and 70 <= len(result.kept) <= 70 + 10
