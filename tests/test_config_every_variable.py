"""Every variable declared in config/options.py, given bad values, through the image's real startup path.

Each case runs ``entrypoint.sh worker`` (which execs ``python3 -m worker worker``, the launcher that validates every
setting before it execs celery) with one variable set to one bad value, and checks: a non-zero exit (64), exactly
one line on stderr naming the variable and what is allowed, no traceback, and no secret of the value echoed.

The bad values are generated per kind of parser, not listed per variable: a value of the wrong type, values just
outside the bounds, the empty string (where the allowed text does not offer it), a valid value with a newline in
it, and a very long value. A new kind of parser fails the test until it has a wrong-type value here.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from config.options import OPTIONS, FernetKeys, KiBOrAuto, SigningKeys, TokenSecrets
from config.spec import (
    MAX_VALUE_CHARS,
    Boolean,
    Choice,
    Credentials,
    DirectoryPath,
    FilePath,
    Integer,
    Option,
    Pattern,
    Text,
    Url,
    WordList,
)
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(180)

ENTRYPOINT = ROOT / "entrypoint.sh"
# Letters and digits only, so that every parser could take it as (part of) a value and URL-encoding leaves it alone.
SECRET = "Sekr1t" + secrets.token_hex(12)
# Where a wrongly accepted value would send the worker: a closed port, never the machine's shared Redis.
CLOSED = "redis://127.0.0.1:9/0"
LONG = 10_000
assert LONG > MAX_VALUE_CHARS

# A value of the wrong type for each kind of parser. A new kind of parser fails the test until it is listed here.
WRONG_TYPE = {
    Integer: "twelve",
    KiBOrAuto: "twelve",
    Boolean: "perhaps",
    Choice: "no-such-choice",
    Url: f"ftp://admin:{SECRET}@example.invalid/x",
    FilePath: "/nonexistent/file.pem",
    DirectoryPath: "relative/directory",
    Pattern: "two words/!",
    WordList: "two words,x",
    Credentials: f"admin{SECRET}",
    SigningKeys: f"{SECRET} with spaces {SECRET}",
    FernetKeys: f"not-a-fernet-key-{SECRET}",
    TokenSecrets: f"{SECRET} with spaces {SECRET}",
    Text: "--no-such-option",
}


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def valid_sample(option: Option) -> str:
    """A value the option accepts, holding SECRET where the option is a secret: the default, or one per parser."""
    parser = option.parser
    if isinstance(parser, Url):
        host = "127.0.0.1:9" if parser.schemes[0].startswith("redis") else "db.invalid:5432"
        return f"{parser.schemes[0]}://admin:{SECRET}@{host}/0" if option.secret else (
            option.default or f"{parser.schemes[0]}://{host}/0")
    if option.default.strip() and not option.secret:
        return option.default
    if isinstance(parser, FernetKeys):
        return _fernet_key()
    if isinstance(parser, SigningKeys):
        return SECRET + SECRET
    if isinstance(parser, Credentials):
        return f"admin:{SECRET}"
    if isinstance(parser, Pattern):
        return SECRET if option.secret else "abc-123"
    if isinstance(parser, WordList):
        return "abc-123"
    if isinstance(parser, Choice):
        return parser.choices[0]
    if isinstance(parser, FilePath):
        return str(ROOT / "README.md")
    if isinstance(parser, Text):
        return "--without-gossip"
    raise AssertionError(f"{option.name}: no valid sample for {type(parser).__name__}")


def out_of_bounds(option: Option) -> list[str]:
    parser = option.parser
    if isinstance(parser, Integer):
        return [str(bound) for bound in ((parser.minimum is not None and parser.minimum - 1),
                                         (parser.maximum is not None and parser.maximum + 1)) if bound is not False]
    if isinstance(parser, Url):
        return [f"{parser.schemes[0]}://admin:{SECRET}@host.invalid:70000/0"]
    if isinstance(parser, SigningKeys):
        return [SECRET[:31]]
    return []


def bad_values(option: Option) -> list[tuple[str, str]]:
    """(kind, value) pairs, every one of which the option must refuse."""
    parser_type = type(option.parser)
    assert parser_type in WRONG_TYPE, f"no wrong-type value known for {parser_type.__name__}: add one to WRONG_TYPE"
    sample = valid_sample(option)
    wrong = WRONG_TYPE[parser_type]
    # A secret option's values are watched for in every output (tests/support/secret_watch.py): make them unique,
    # or another test that echoes the same junk for a plain option would count as a leak.
    values = [("wrong type", f"{wrong} {SECRET}" if option.secret and SECRET not in wrong else wrong)]
    values += [("out of bounds", value) for value in out_of_bounds(option)]
    if "empty" not in option.parser.allowed:  # the allowed text says whether empty is a value
        values.append(("empty", ""))
    values.append(("newline", f"{sample}\n{sample}"))
    values.append(("very long", sample + "x" * (LONG - len(sample))))
    return values


def clean_environment() -> dict[str, str]:
    ours = {option.name for option in OPTIONS} | {f"{option.name}_FILE" for option in OPTIONS}
    return {name: value for name, value in os.environ.items() if name not in ours}


def start_up(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """``entrypoint.sh worker`` as the image runs it; a startup that gets past validation is stopped after 30 s."""
    python_dir = str(Path(sys.executable).parent)  # entrypoint.sh execs `python3` from PATH, as in the image
    full = {**clean_environment(), "PATH": f"{python_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "ENV_FILE": "/nonexistent/.env", "BROKER_URL": CLOSED, "CELERY_RESULT_BACKEND": CLOSED,
            "WORKER_HEALTH_DIR": str(tmp_path / "health"), **env}
    proc = subprocess.Popen(["bash", str(ENTRYPOINT), "worker"], cwd=tmp_path, env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return subprocess.CompletedProcess(proc.args, "still running after 30 s", stdout, stderr)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_every_sample_is_valid() -> None:
    for option in OPTIONS:
        option.parse(valid_sample(option))


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.name)
def test_every_bad_value_stops_the_entrypoint_with_one_clear_line(option: Option, tmp_path: Path) -> None:
    problems = []
    for kind, value in bad_values(option):
        done = start_up({option.name: value}, tmp_path)
        output = done.stdout + done.stderr
        lines = done.stderr.strip().splitlines()
        line = lines[0] if lines else ""
        checks = {
            "exits 64": done.returncode == 64,
            "one line on stderr": len(lines) == 1,
            "names the variable": line.startswith(f"configuration error: {option.name}"),
            "says what is allowed": "; allowed: " in line,
            "short enough to read": len(line) <= 600,
            "no traceback": "Traceback" not in output,
            "nothing on stdout": done.stdout == "",
            "no secret echoed": SECRET not in output and quote(SECRET) not in output,
        }
        failed = [check for check, ok in checks.items() if not ok]
        if failed:
            shown = value if len(value) < 100 else f"{value[:60]!r}... ({len(value)} characters)"
            problems.append(f"{kind} {shown!r}: {', '.join(failed)} (exit {done.returncode}; stderr "
                            f"{len(lines)} lines, first: {line[:300]!r}, last: {lines[-1][:300] if lines else ''!r})")
    assert not problems, f"{option.name}:\n" + "\n".join(problems)
