"""``python -m mlcd.cli``: the same as the ``mlcd`` console script."""

from mlcd.cli import main

main()
