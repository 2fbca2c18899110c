"""``python -m worker COMMAND``: see worker/cli/__init__.py for the commands."""

import sys

from worker.cli import main

if __name__ == "__main__":
    sys.exit(main())
