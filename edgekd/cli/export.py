"""`edgekd export` and `edgekd targets`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from edgekd.cli.app import app, user_errors
from edgekd.errors import UserError


@app.command()
@user_errors
def export(
    student: Path = typer.Argument(..., help="Student folder written by edgekd distill."),
    target: List[str] = typer.Option(
        ["onnx-int8"], help="Target name from `edgekd targets` or a YAML file; repeatable."),
    out: Path = typer.Option(..., help="Folder that receives one sub-folder per target."),
    overwrite: bool = typer.Option(False, help="Replace existing target folders."),
):
    """Convert a student to ONNX (and quantise it) for each target, checked against PyTorch.

    Example:

        edgekd export runs/student --target onnx-fp32 --target onnx-int8 --out runs/export
    """
    from rich.console import Console
    from rich.table import Table

    from edgekd.export.stage import export as run_export
    from edgekd.targets import load_target

    targets = [load_target(name) for name in target]
    if not Path(student).is_dir():
        raise UserError(f"student folder {student} does not exist; run edgekd distill first")
    artifacts = run_export(Path(student), targets=targets, out=out, overwrite=overwrite)
    table = Table(title=f"exported to {out}")
    for header in ("target", "precision", "size (MB)", "max |Δlogit|", "agreement", "seconds"):
        table.add_column(header)
    for a in artifacts:
        table.add_row(a.target, a.precision, f"{a.size_bytes / 1e6:.1f}",
                      f"{a.parity.max_abs_diff:.1e}", f"{100 * a.parity.agreement:.1f}%",
                      f"{a.seconds:.1f}")
    Console().print(table)


@app.command()
@user_errors
def targets():
    """List the device targets (targets/*.yaml) with a one-line description each."""
    from edgekd.targets import known_targets, load_target

    for name in known_targets():
        target = load_target(name)
        typer.echo(f"{name:<20} {target.format:<5} {target.precision:<13} {target.description}")
