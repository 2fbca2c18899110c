"""Generate config/settings.py, the typed Settings class, from config/options.py.

`python -m config.codegen` rewrites it; tests/test_config.py fails while the checked-in file differs from what
this renders. A checked-in module rather than a class built at import time: type checkers and editors only see
fields that are written down.
"""

from __future__ import annotations

import sys
from pathlib import Path

from config.options import OPTIONS

TARGET = Path(__file__).with_name("settings.py")

HEADER = '''"""GENERATED from config/options.py by `python -m config.codegen`; do not edit by hand.

One typed, read-only field per environment variable (the variable name in lower case), so that a misspelt
setting raises AttributeError at once and type checkers see every field. tests/test_config.py fails while this
file is stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from config.settings_base import SettingsBase

__all__ = ["Settings"]


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class Settings(SettingsBase):
    """Validated settings; build them with config.load_settings, reach them with worker.settings.get_settings."""

'''


def render() -> str:
    return HEADER + "".join(f"    {option.attribute}: {option.parser.type_hint}\n" for option in OPTIONS)


def main(argv: list[str]) -> int:
    TARGET.write_text(render())
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
