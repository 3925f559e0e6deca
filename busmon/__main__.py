"""``python -m busmon``: the ``busmon`` command."""

from busmon.tui.cli import main

if __name__ == "__main__":
    main()
