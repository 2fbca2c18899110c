"""Fenced code blocks of README.md and docs/*.md, with the doctest marker that says how a test runs them.

A marker is an HTML comment (invisible on GitHub) on its own line right before a fence; only blank lines may
separate the two:

    <!-- doctest: run -->                         run as written (see tests/test_docs.py for what stands in
                                                  for docker, helm and kubectl on this machine)
    <!-- doctest: run needs=worker -->            a Python block that talks to a running worker; a shell block
                                                  that runs with the test session's settings (BROKER_URL,
                                                  DATABASE_URL, ...) beside a running worker
    <!-- doctest: run needs=secrets -->           a `docker run` block started in a directory whose secrets/
                                                  holds the test's Redis, PostgreSQL and CA
    <!-- doctest: run needs=api -->               a shell block that talks to the API service (`python -m worker
                                                  api`) of a running worker: API_URL, API_TOKEN and
                                                  CONFIGURATION_ID are set, as `. .run/api.env` sets them
    <!-- doctest: run given=organization_id,user_id -->   a Python block that uses these names from its context
    <!-- doctest: dry-run -->                     like run, and `make` runs as `make -n` (targets that never end
                                                  or that run the whole suite)
    <!-- doctest: skip: REASON -->                not run; the reason is required

Every shell or Python block must carry a marker, so a new command cannot slip in untested.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHELL_LANGUAGES = frozenset({"sh", "bash", "shell", "console"})
PYTHON_LANGUAGES = frozenset({"python", "py"})
COMMAND_LANGUAGES = SHELL_LANGUAGES | PYTHON_LANGUAGES
MODES = ("run", "dry-run", "skip")
OPTIONS = {"needs": {"worker", "secrets", "api"}, "given": None}

_MARKER = re.compile(r"^\s*<!--\s*doctest:\s*(?P<body>.*?)\s*-->\s*$")
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<ticks>`{3,})(?P<lang>[^`\s]*)\s*$")
_HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*$")


@dataclass(frozen=True)
class Marker:
    mode: str
    options: dict[str, str] = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    heading: str  # the nearest heading above the block
    marker: Marker | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def is_command(self) -> bool:
        return self.lang in COMMAND_LANGUAGES

    @property
    def is_shell(self) -> bool:
        return self.lang in SHELL_LANGUAGES

    def option(self, name: str) -> str:
        return self.marker.options.get(name, "") if self.marker else ""


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def parse_marker(body: str) -> Marker:
    """``run needs=worker`` -> Marker; raises ValueError with what is wrong."""
    mode, _, rest = body.partition(" ")
    if mode.rstrip(":") == "skip":
        reason = body[len("skip"):].lstrip(": ").strip()
        if not reason:
            raise ValueError("a skip marker needs a reason: <!-- doctest: skip: why it cannot run -->")
        return Marker("skip", reason=reason)
    if mode not in MODES:
        raise ValueError(f"unknown doctest mode {mode!r}; allowed: {', '.join(MODES)}")
    options: dict[str, str] = {}
    for word in rest.split():
        key, sep, value = word.partition("=")
        allowed = OPTIONS.get(key, ())
        if not sep or key not in OPTIONS or (allowed is not None and value not in allowed):
            raise ValueError(f"unknown doctest option {word!r}; allowed: needs=worker, needs=secrets, needs=api, "
                             "given=a,b")
        options[key] = value
    return Marker(mode, options)


def read_blocks(path: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of ``path`` and the marker problems found on the way (``file:line: what``)."""
    lines = path.read_text().splitlines()
    rel = path.relative_to(ROOT)
    blocks: list[Block] = []
    problems: list[str] = []
    heading = ""
    pending: tuple[int, Marker | None] | None = None  # a marker waiting for its fence
    index = 0
    while index < len(lines):
        line = lines[index]
        if pending is not None and line.strip() and not _FENCE.match(line):
            problems.append(f"{rel}:{pending[0]}: doctest marker is not followed by a fenced block")
            pending = None
        if (title := _HEADING.match(line)) is not None:
            heading = title["title"]
        elif (marker := _MARKER.match(line)) is not None:
            try:
                pending = (index + 1, parse_marker(marker["body"]))
            except ValueError as exc:
                problems.append(f"{rel}:{index + 1}: {exc}")
                pending = (index + 1, None)
        elif (fence := _FENCE.match(line)) is not None:
            start, ticks = index, fence["ticks"]
            index += 1
            while index < len(lines) and lines[index].strip() != ticks:
                index += 1
            code = textwrap.dedent("\n".join(lines[start + 1:index])) + "\n"
            found = pending[1] if pending else None
            blocks.append(Block(path, start + 1, fence["lang"].lower(), code, heading, found))
            pending = None
        index += 1
    if pending is not None:
        problems.append(f"{rel}:{pending[0]}: doctest marker is not followed by a fenced block")
    return blocks, problems


def marker_problems(blocks: list[Block]) -> list[str]:
    """Blocks whose marking is missing or meaningless."""
    problems = []
    for block in blocks:
        if not block.lang:
            problems.append(f"{block.where}: fenced block without a language (use text for output)")
        elif block.is_command and block.marker is None:
            problems.append(f"{block.where}: {block.lang} block without a doctest marker: mark it "
                            "<!-- doctest: run --> (or dry-run), or <!-- doctest: skip: REASON -->")
        elif not block.is_command and block.marker is not None:
            problems.append(f"{block.where}: doctest marker on a {block.lang} block, which is never run")
        elif block.marker and block.marker.options.get("needs") in ("secrets", "api") and not block.is_shell:
            problems.append(f"{block.where}: needs={block.marker.options['needs']} is for shell blocks")
    return problems


def all_blocks() -> tuple[list[Block], list[str]]:
    blocks: list[Block] = []
    problems: list[str] = []
    for path in doc_files():
        found, trouble = read_blocks(path)
        blocks += found
        problems += trouble
    return blocks, problems + marker_problems(blocks)
