"""`edgekd bench`: `edgekd.bench` on the command line; a failed gate still writes the report,
then exits with code 2."""

from __future__ import annotations

import edgekd
from edgekd.cli.app import app
from edgekd.cli.commands import command, register

HELP = """
Compare teacher, student and exported artifacts, measured interleaved: for classifiers
accuracy, agreement, size, memory, latency and throughput; for causal LMs perplexity,
next-token agreement with the teacher, prefill and decode speed at 1 thread, memory and
size. Writes the report, then exits with code 2 when a gate fails. The same as
`edgekd.bench(...)` in Python.

Example:

    edgekd bench --teacher runs/teacher --student runs/student --artifacts runs/export --data test.csv --max-latency-ms 20

    edgekd bench --teacher runs/lm-teacher --student runs/lm --artifacts runs/lm-export --data test.txt

    edgekd bench --teacher runs/vit --student runs/cnn --artifacts runs/cnn-export --data photos/test

    edgekd export runs/teacher --target onnx-int8 --out runs/teacher-export
    edgekd bench --teacher runs/teacher --student runs/student --artifacts runs/export --teacher-artifacts runs/teacher-export --data test.csv
"""


def _stop_on_failed_gates(report: edgekd.Report) -> None:
    from edgekd.benchmarking.gates import raise_for_failed_gates

    raise_for_failed_gates(report.data["gates"])


register(app, command(edgekd.bench, name="bench", help=HELP, required=("teacher", "data"),
                      after=_stop_on_failed_gates))
