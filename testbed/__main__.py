"""`python -m testbed`, `torchrun -m testbed` and the `testbed` command all enter here."""

import sys


def entry():
    """The command line. A Ctrl-C while it is still importing ends it with exit 130 too."""
    try:
        from testbed.cli import main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    main()


if __name__ == "__main__":
    entry()
