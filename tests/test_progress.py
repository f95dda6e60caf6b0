"""Progress in a log: plain lines with count, rate and time left when no terminal can redraw a bar."""

from __future__ import annotations

from edgekd.progress import LOG_EVERY, plain_progress


def test_a_log_gets_a_line_every_few_seconds_with_rate_and_eta():
    now = [0.0]
    lines: list[str] = []
    with plain_progress("teacher outputs", total=100, clock=lambda: now[0], write=lines.append) as advance:
        for _ in range(10):
            now[0] += LOG_EVERY / 4
            advance(5, loss=0.25)
    # 25 s for 50 rows: a line after 10 s and 20 s, and one at the end
    assert len(lines) == 3
    assert lines[0] == "teacher outputs: 20/100 (20%), 2.0/s, ETA 0m40s, 0m10s elapsed  loss 0.25"
    assert lines[-1].startswith("teacher outputs: 50/100 (50%), 2.0/s, ETA 0m25s, 0m25s elapsed")


def test_nothing_done_yet_has_no_eta():
    lines: list[str] = []
    with plain_progress("reading", total=10, clock=lambda: 1.0, write=lines.append):
        pass
    assert lines == ["reading: 0/10 (0%), 0.0/s, 0m00s elapsed"]
