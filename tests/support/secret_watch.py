"""Session-wide leak check: no secret the tests handed to a process may appear in any output of the suite.

Fixtures register every secret they create or pass on (database passwords, Redis passwords in URLs, Flower
basic-auth passwords, tenant signing keys, TLS private keys named in URLs) and every log file or captured output of
the worker, Flower and entrypoint processes they start. At session end every output is searched for every secret,
raw and URL-encoded; a hit fails the run (non-zero exit status) and the terminal summary names the output and the
secret's label, never the secret itself.

Load it as a plugin: tests/conftest.py imports its hooks; a throwaway run uses ``-p tests.support.secret_watch``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, quote_plus, unquote, urlsplit

import pytest

# Shorter values are too likely to occur by chance ("guest", "redis") to be worth a failing run.
MIN_SECRET_LENGTH = 8
# The product's options that carry a secret (config/options.py, secret=True); also read from NAME_FILE.
SECRET_OPTIONS = ("BROKER_URL", "CELERY_RESULT_BACKEND", "DATABASE_URL", "MIGRATION_DATABASE_URL",
                  "FLOWER_BASIC_AUTH", "TENANT_SIGNING_KEY", "API_TOKEN_SECRET")


@dataclass
class SecretWatch:
    secrets: dict[str, str] = field(default_factory=dict)  # value -> label (one label per value is enough)
    output_files: dict[Path, str] = field(default_factory=dict)  # path -> what wrote it
    captured: list[tuple[str, str]] = field(default_factory=list)  # (what wrote it, text)

    def add_secret(self, label: str, value: str | None) -> None:
        if value and len(value) >= MIN_SECRET_LENGTH:
            self.secrets.setdefault(value, label)

    def add_output_file(self, path: Path, source: str) -> None:
        self.output_files[Path(path)] = source

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
    if name in ("TENANT_SIGNING_KEY", "API_TOKEN_SECRET"):
        for index, key in enumerate(value.split(","), 1):
            register_secret(f"{label} (key {index})", key.strip())
    elif name == "FLOWER_BASIC_AUTH":
        for pair in value.split(","):
            register_secret(f"{label} password", pair.partition(":")[2])
    else:
        register_url(label, value)


# -- pytest hooks ----------------------------------------------------------------------------------------------

LEAKS_KEY = pytest.StashKey[list[str]]()


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
