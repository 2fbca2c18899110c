"""``python -m config check|table|worker-args|update-readme``: an alias of the same ``python -m worker`` commands.

Kept for the Makefile, the chart tests and habits; ``check`` is the default. A bad value exits 64 (EX_USAGE)
with one line on stderr.
"""

from __future__ import annotations

import sys

from worker.cli import CONFIG_COMMANDS, main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["check"], commands=CONFIG_COMMANDS, prog="python -m config"))
