"""``check``, ``table``, ``update-readme``, ``worker-args``: the settings as the product reads them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from config import Settings, load_settings
from config.options import OPTIONS


def shown_settings(settings: Settings) -> list[str]:
    """``NAME=value`` for every variable; URLs as scheme://user:***@host, other secrets as (set)/(empty)."""
    lines = [f"{option.name}={option.show(getattr(settings, option.attribute))}" for option in OPTIONS]
    return lines


def check(_args: argparse.Namespace) -> int:
    print("\n".join(shown_settings(load_settings())))
    return 0


def table(_args: argparse.Namespace) -> int:
    from config.docs import env_table

    print(env_table())
    return 0


def update_readme(args: argparse.Namespace) -> int:
    from config.docs import replace_table

    readme = Path(args.readme)
    readme.write_text(replace_table(readme.read_text()))
    return 0


def worker_args(_args: argparse.Namespace) -> int:
    from worker.launch.command import worker_launch

    # NUL-separated so that a shell can rebuild the argv without re-splitting it.
    sys.stdout.write("\0".join(worker_launch(load_settings()).argv) + "\0")
    return 0
