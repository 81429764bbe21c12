"""``python -m GRID_XFER.cli``: the same as ``gridxfer``."""

from GRID_XFER.cli import main

main()
