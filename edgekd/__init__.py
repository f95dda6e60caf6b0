"""edgekd: distill a large teacher into a compact student, export it for edge devices,
and prove with one report how much accuracy was kept and how much faster it runs."""

__version__ = "0.1.0"
