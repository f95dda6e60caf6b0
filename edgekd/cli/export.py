"""`edgekd export` (`edgekd.export` on the command line) and `edgekd targets`."""

from __future__ import annotations

import typer

import edgekd
from edgekd.cli.app import app, user_errors
from edgekd.cli.commands import command, register

HELP = """
Convert a student for each target (ONNX, .ort, .pte; fp32, fp16, int8, int4), each
checked against PyTorch and, with --data, held to its target's budget. A classifier's
logits are compared; a causal LM becomes ONNX with a key/value cache, its greedy tokens
compared with PyTorch's and its quantised targets held to a perplexity budget. The same
as `edgekd.export(...)` in Python.

Example:

    edgekd export runs/student --target onnx-fp32 --target onnx-int8 --data val.csv --out runs/export

    edgekd export runs/student --target phone-arm64 --data val.csv --verify arm64 --out runs/export

    edgekd export runs/lm --target onnx-int8 --data held-out.txt --out runs/lm-export

    edgekd export runs/image-student --target onnx-int8 --target ort-mobile --data photos/val --out runs/img
"""

register(app, command(edgekd.export, name="export", help=HELP, arguments=("student",), required=("out",),
                      flags={"targets": "target"}))


@app.command()
@user_errors
def targets():
    """List the device targets (targets/*.yaml) by task, with a one-line description each.
    A target serves every task it lists; device profiles inherit from a target with `base:`."""
    from edgekd.targets import known_targets, load_target
    from edgekd.tasks import TASKS

    width = max(len(name) for name in known_targets())
    for task in TASKS.values():
        typer.echo(f"{task.name}: {task.summary}")
        for name in known_targets(task.name):
            target = load_target(name)
            typer.echo(f"  {name:<{width}} {target.format:<6} {target.precision:<12} "
                       f"{target.runtime.threads:>2} thr  {target.description}")
