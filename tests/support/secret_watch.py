"""Session-wide leak check: no secret the tests handed to a process may appear in any output of the suite.

Fixtures register every secret they create or pass on (database passwords, Redis passwords in URLs, Flower
basic-auth passwords, tenant signing keys, TLS private keys named in URLs). Every subprocess the tests start is
watched in one place, ``subprocess.Popen`` (which ``subprocess.run``, ``check_output`` and every helper of the
suite go through; see ``WatchedPopen``): the secret options in its environment and in ``NAME=value`` arguments
(``podman run --env``) are registered, and so is its output, whether it goes to a file or is read back with
``communicate()`` (``subprocess.run(capture_output=True)``): worker logs, ``python -m worker ...`` and
``entrypoint.sh`` runs, container runs and ``podman logs``. After each test and at session end every output is
searched for every secret, raw and URL-encoded; a hit fails the run (non-zero exit status) and the terminal summary
names the output and the secret's label, never the secret itself.

Not seen: output a test reads from a pipe itself (``proc.stdout.read()``) instead of with ``communicate()``.

Load it as a plugin: tests/conftest.py lists it in ``pytest_plugins``; a throwaway run uses
``-p tests.support.secret_watch``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, unquote, urlsplit

import pytest

from config.options import OPTIONS

# Shorter values are too likely to occur by chance ("guest", "redis") to be worth a failing run.
MIN_SECRET_LENGTH = 8
# The product's options that carry a secret (config/options.py, secret=True); also read from NAME_FILE.
SECRET_OPTIONS = tuple(option.name for option in OPTIONS if option.secret)
# Comma-separated lists of keys.
KEY_LIST_OPTIONS = ("TENANT_SIGNING_KEY", "DB_ENCRYPTION_KEY", "API_TOKEN_SECRET")


@dataclass
class SecretWatch:
    secrets: dict[str, str] = field(default_factory=dict)  # value -> label (one label per value is enough)
    output_files: dict[Path, str] = field(default_factory=dict)  # path -> what wrote it
    captured: list[tuple[str, str]] = field(default_factory=list)  # (what wrote it, text)

    def add_secret(self, label: str, value: str | None) -> None:
        if value and len(value) >= MIN_SECRET_LENGTH:
            self.secrets.setdefault(value, label)

    def add_output_file(self, path: Path, source: str) -> None:
        # The first label stays: a helper's own (worker test-prefork-...) beats the generic one of WatchedPopen.
        self.output_files.setdefault(Path(path), source)

    def add_captured(self, source: str, text: str | bytes | None) -> None:
        if text:
            self.captured.append((source, text.decode(errors="replace") if isinstance(text, bytes) else text))

    found: set[str] = field(default_factory=set)  # leak lines seen so far
    _scanned: dict[str, tuple] = field(default_factory=dict)  # output name -> state when last searched

    def scan(self) -> None:
        """Search every output that changed (or may hold a secret registered since) since it was last searched.

        Run after each test as well as at session end: some outputs live in directories a fixture removes.
        """
        forms = {form: label for value, label in self.secrets.items() for form in encodings(value)}
        for path, source in self.output_files.items():
            try:
                stat = path.stat()
            except OSError:
                continue
            self._search(f"{path} ({source})", (stat.st_size, stat.st_mtime_ns, len(forms)),
                         lambda path=path: path.read_text(errors="replace"), forms)
        for index, (source, text) in enumerate(self.captured):
            self._search(f"captured output #{index} of {source}", (len(forms),), lambda text=text: text, forms)

    def _search(self, name: str, state: tuple, read, forms: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
        if self._scanned.get(name) == state:
            return
        self._scanned[name] = state
        text = read()
        self.found.update(f"{name}: contains {label}" for form, label in forms.items() if form in text)

    def leaks(self) -> list[str]:
        """One line per (output, secret) hit; the secret itself never appears in the line."""
        self.scan()
        return sorted(self.found)


def encodings(value: str) -> set[str]:
    """The forms in which a secret may be written out: raw and URL-encoded (path and form style)."""
    return {value, quote(value, safe=""), quote_plus(value, safe="")}


WATCH = SecretWatch()


def register_secret(label: str, value: str | None) -> None:
    WATCH.add_secret(label, value)


def register_output_file(path: Path, source: str) -> None:
    WATCH.add_output_file(path, source)


def register_captured(source: str, text: str | bytes | None) -> None:
    WATCH.add_captured(source, text)


def register_url(label: str, url: str | None) -> None:
    """The password of a URL, and the private key its ``ssl_keyfile`` parameter names."""
    if not url or "://" not in url:
        return
    parts = urlsplit(url)
    if parts.password:
        register_secret(f"{label} password", unquote(parts.password))
    for keyfile in parse_qs(parts.query).get("ssl_keyfile", []):
        register_private_key(f"{label} ssl_keyfile", Path(keyfile))


def register_private_key(label: str, path: Path) -> None:
    """Each base64 line of a PEM private key: any one of them in a log is a leak of key material."""
    try:
        text = path.read_text()
    except OSError:
        return
    for line in text.splitlines():
        if not line.startswith("-----"):
            register_secret(label, line.strip())


def register_environment(env: dict[str, str], source: str) -> None:
    """Every secret in a process environment built from the product's options (also their NAME_FILE forms)."""
    for name in SECRET_OPTIONS:
        values = [env.get(name)]
        file_name = env.get(f"{name}_FILE")
        if file_name:
            try:
                values.append(Path(file_name).read_text().strip())
            except OSError:
                pass
        for value in filter(None, values):
            register_option_value(name, value, source)


def register_option_value(name: str, value: str, source: str) -> None:
    label = f"{name} of {source}"
    if name in KEY_LIST_OPTIONS:
        for index, key in enumerate(value.split(","), 1):
            register_secret(f"{label} (key {index})", key.strip())
    elif name == "FLOWER_BASIC_AUTH":
        for pair in value.split(","):
            register_secret(f"{label} password", pair.partition(":")[2])
    elif "://" in value:
        register_url(label, value)
    else:  # an API key
        register_secret(label, value.strip())


def register_arguments(args: Any, source: str) -> None:
    """Secret options passed as ``NAME=value`` arguments (``podman run --env NAME=value``, ``env NAME=value ...``)."""
    if isinstance(args, (str, bytes)):
        text = os.fsdecode(args)
        try:
            words = shlex.split(text)
        except ValueError:
            words = text.split()
    else:
        words = [os.fsdecode(word) for word in args]
    for word in words:
        name, equals, value = word.partition("=")
        if equals and name in SECRET_OPTIONS and value:
            register_option_value(name, value, source)


# -- every subprocess of the session -----------------------------------------------------------------------------

_REAL_POPEN = subprocess.Popen


def _program(args: Any) -> str:
    """``python -m worker``, ``bash``, ``podman``: the program and, for ``python -m``, its module; never a value."""
    if isinstance(args, (str, bytes)):
        words = os.fsdecode(args).split()
    else:
        words = [os.fsdecode(word) for word in args]
    if not words:
        return "?"
    program = Path(words[0]).name
    if program.startswith("python") and "-m" in words[1:-1]:
        return f"{program} -m {words[words.index('-m', 1) + 1]}"
    return program


def _output_path(stream: Any) -> Path | None:
    name = getattr(stream, "name", None)
    return Path(name) if isinstance(name, str) and os.path.isfile(name) else None


class WatchedPopen(_REAL_POPEN):  # type: ignore[misc, valid-type]
    """``subprocess.Popen`` that registers the secrets it hands to a process and the outputs it takes back.

    Installed for the session by ``pytest_configure``: ``subprocess.run`` and every helper look Popen up in the
    subprocess module when called, so no test and no helper can start a process the leak check does not see.
    """

    def __init__(self, args: Any, *positional: Any, **kwargs: Any) -> None:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
        self._watch_source = f"{_program(args)} started by {test or 'the session'}"
        if kwargs.get("env") is not None:
            register_environment(kwargs["env"], self._watch_source)
        register_arguments(args, self._watch_source)
        for stream in (kwargs.get("stdout"), kwargs.get("stderr")):
            path = _output_path(stream)
            if path is not None:
                register_output_file(path, self._watch_source)
        super().__init__(args, *positional, **kwargs)

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        stdout, stderr = super().communicate(input, timeout)
        register_captured(self._watch_source, stdout)
        register_captured(self._watch_source, stderr)
        return stdout, stderr


# -- pytest hooks ----------------------------------------------------------------------------------------------

LEAKS_KEY = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    subprocess.Popen = WatchedPopen  # type: ignore[misc]


def pytest_unconfigure(config: pytest.Config) -> None:
    subprocess.Popen = _REAL_POPEN  # type: ignore[misc]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):  # type: ignore[no-untyped-def]
    try:
        return (yield)
    finally:
        WATCH.scan()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaks = WATCH.leaks()
    session.config.stash[LEAKS_KEY] = leaks
    if leaks and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    leaks = config.stash.get(LEAKS_KEY, [])
    checked = f"{len(WATCH.output_files) + len(WATCH.captured)} outputs checked against {len(WATCH.secrets)} secrets"
    if not leaks:
        if WATCH.secrets:
            terminalreporter.write_line(f"secret leak check: {checked}, no leak")
        return
    terminalreporter.section("secret leaks", sep="=", red=True, bold=True)
    for leak in leaks:
        terminalreporter.write_line(f"SECRET LEAK {leak}", red=True)
    terminalreporter.write_line(f"{len(leaks)} secret leak(s); {checked}: the run fails", red=True)
