"""`python -m config check|table|worker-args|update-readme`.

Exit status 64 (EX_USAGE) with one line on stderr when a value is bad, so that entrypoint.sh can stop
before anything starts.
"""

from __future__ import annotations

import sys
from pathlib import Path

from config.docs import env_table, replace_table
from config.loader import load_settings
from config.options import OPTIONS
from config.spec import ConfigError
from config.worker_command import WORKER_OPTIONS, worker_argv

EX_USAGE = 64


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "check"
    try:
        if command == "check":
            settings = load_settings()
            for option in OPTIONS:
                print(f"{option.name}={option.show(getattr(settings, option.attribute))}")
        elif command == "worker-args":
            # NUL-separated so that the shell can rebuild the argv without re-splitting it.
            sys.stdout.write("\0".join(worker_argv(load_settings(only=WORKER_OPTIONS))) + "\0")
        elif command == "table":
            print(env_table())
        elif command == "update-readme":
            readme = Path(argv[1] if len(argv) > 1 else "README.md")
            readme.write_text(replace_table(readme.read_text()))
        else:
            print(f"usage: python -m config check|table|worker-args|update-readme (got {command!r})", file=sys.stderr)
            return EX_USAGE
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EX_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
