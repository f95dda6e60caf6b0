"""`edgekd distill`: `edgekd.distill` on the command line (its keywords are the options)."""

from __future__ import annotations

import edgekd
from edgekd.cli.app import app
from edgekd.cli.commands import command, register

HELP = """
Train a compact student to imitate a teacher: a text classifier (soft labels, hard
labels, hidden states, attention, MiniLM relations: each loss by its weight), an image
classifier (soft labels, feature maps, the same augmented view for both) or a decoder
language model (next-token KL or JSD, top-k teacher cache). The task is read from the
teacher; an option left out takes that task's default (shown per task below). The same
as `edgekd.distill(...)` in Python, whose keywords are these options.

Example:

    edgekd distill --teacher runs/teacher --data train.csv --student-layers 2 --out runs/student

    edgekd distill --recipe examples/tinybert.yaml --teacher runs/teacher --data train.csv --out runs/s

    edgekd distill --teacher runs/teacher --data train.csv --student-config hidden=192,layers=2,intermediate=768 --out runs/sliced

    edgekd distill --teacher runs/teacher --data train.csv --student-config hidden=192,layers=2 --trim-vocab --out runs/small

    edgekd distill --teacher runs/teacher --data train.csv --latency-budget-ms 3 --out runs/sized

    edgekd distill --teacher HuggingFaceTB/SmolLM2-360M --task causal-lm --data text.txt --student-layers 8 --out runs/lm

    torchrun --nproc_per_node 2 -m edgekd distill --teacher runs/teacher --data train.csv --out runs/s
"""

register(app, command(edgekd.distill, name="distill", help=HELP))
