"""The command line: each command parses options, builds a config, calls one stage.

One module per command; importing them registers the commands on `app`.
"""

from edgekd.cli import bench, demo, distill, export, generate  # noqa: F401  (registers commands)
from edgekd.cli.app import app


def main() -> None:
    app()
