"""``python -m dalib``: the ``dalib`` command of the interpreter that runs it."""

from dalib.cli import main

main()
