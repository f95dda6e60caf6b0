"""A student sized to a latency budget: the picker, the timings and the command."""

from __future__ import annotations

import json

from conftest import assert_clean_error, make_classifier, make_rows, run_cli, write_jsonl
from edgekd.sizing import ShapeCandidate, candidates_by_width, non_embedding_parameters, pick


def test_the_picker_takes_the_more_capable_of_the_shapes_that_fit_and_bisects_depth():
    widths = [[ShapeCandidate(n, 64, 4, 256) for n in range(1, 9)], [ShapeCandidate(n, 32, 2, 128) for n in range(1, 9)]]
    latency = {64: 3.0, 32: 1.0}  # ms per layer
    calls = []

    def timed(candidate):
        calls.append(candidate)
        return latency[candidate.hidden] * candidate.layers

    capacity = lambda c: c.layers * c.hidden * c.hidden  # noqa: E731
    chosen, table = pick(widths, budget_ms=10.0, latency=timed, capacity=capacity)
    # fits: 3 layers x 64 (capacity 12288) and 8 layers x 32 (8192): the larger one wins
    assert chosen == ShapeCandidate(3, 64, 4, 256)
    assert len(calls) == len(set(calls)) <= 2 * 4  # bisection: a few per width, none twice
    assert [row for row in table if row["chosen"]][0]["shape"] == chosen.spec
    assert all(row["fits"] == (row["latency_ms"] <= 10.0) for row in table)
    none, _ = pick(widths, budget_ms=0.5, latency=timed, capacity=capacity)
    assert none is None


def test_candidate_widths_keep_whole_heads_and_key_value_groups():
    teacher = make_classifier("bert", layers=4)  # hidden 32, 4 heads of 8
    widths = candidates_by_width(teacher)
    assert [w[0].hidden for w in widths] == [32, 24, 16, 8] and all(len(w) == 4 for w in widths)
    assert all(c.hidden == 8 * c.heads for w in widths for c in w)
    from lm_tiny import make_llama

    llama = make_llama(layers=2, hidden=32, heads=4, kv_heads=2)
    assert all(c.heads % 2 == 0 for w in candidates_by_width(llama) for c in w)
    assert non_embedding_parameters(teacher, widths[0][-1]) == 4 * (32 * 32 * 4 + 2 * 32 * 128)


def test_distill_sizes_the_student_to_a_budget_and_refuses_one_nothing_meets(teacher_dir, tmp_path):
    train = write_jsonl(make_rows(48, seed=4), tmp_path / "train.jsonl")
    common = ["--teacher", teacher_dir, "--data", train, "--epochs", "1", "--batch-size", "8", "--max-length", "16",
              "--budget-target", "onnx-fp32", "--sequence-length", "16", "--quiet", "--cache-dir", tmp_path / "c"]
    roomy = run_cli("distill", *common, "--latency-budget-ms", "10000", "--out", tmp_path / "roomy")
    assert roomy.exit_code == 0, roomy.output
    assert "<- chosen" in roomy.output and "sizing: timing candidate shapes on onnx-fp32" in roomy.output
    config = json.loads((tmp_path / "roomy" / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"]) == (4, 32)  # everything fits: the teacher's shape
    again = run_cli("distill", *common, "--latency-budget-ms", "10000", "--out", tmp_path / "again")
    assert again.exit_code == 0, again.output  # timings come from the cache this time
    tight = run_cli("distill", *common, "--latency-budget-ms", "0.000001", "--out", tmp_path / "tight")
    assert_clean_error(tight, r"no student shape runs within 1e-06 ms on onnx-fp32 here")
    both = run_cli("distill", *common, "--latency-budget-ms", "5", "--student-layers", "2", "--out", tmp_path / "b")
    assert_clean_error(both, "--latency-budget-ms chooses the student's shape itself")
    mobile = run_cli("distill", *common, "--budget-target", "ort-mobile", "--latency-budget-ms", "5",
                     "--out", tmp_path / "m")  # the later --budget-target wins
    assert_clean_error(mobile, "a latency budget is measured on an ONNX target")
