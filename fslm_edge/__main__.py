"""``python -m fslm_edge``: the command line."""

from .cli import main

main()
