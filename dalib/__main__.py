"""``python -m dalib``: the ``dalib`` command of the interpreter that runs it."""

from dalib.cli import main

if __name__ == "__main__":
    main()
