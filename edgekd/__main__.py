# `python -m edgekd ...` and `torchrun -m edgekd ...` run the same CLI as `edgekd ...`.
from edgekd.cli import main

main()
