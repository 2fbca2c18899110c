"""Typed declarations for environment variables.

Each variable is declared once as an :class:`Option`; its parser knows how to turn the raw string
into a value and how to describe what is allowed, so error messages and the README table come from
the same place.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from config.masking import mask_url


class ConfigError(ValueError):
    """A configuration value is unusable; the message is one line fit for an operator."""


# Rules for every value, whatever its parser (checked by Option.parse before the parser runs): one line, and no
# longer than any sane setting. A newline or other control character in a URL would be dropped silently by
# urllib's urlsplit (the URL then validates) and reach redis-py, kombu and the log as it is.
MAX_VALUE_CHARS = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Error messages quote at most this many characters of a value, so that the line stays readable.
SHOWN_CHARS = 80


def clip(text: str) -> str:
    """``repr`` of ``text``, cut to SHOWN_CHARS characters with the full length said when longer."""
    if len(text) <= SHOWN_CHARS:
        return repr(text)
    return f"{text[:SHOWN_CHARS]!r}... ({len(text)} characters)"


class Parser:
    """Turns a raw string into a typed value; raises ValueError with a short reason."""

    allowed: str = "any text"
    # The Python type of a parsed value, as written in the generated Settings class (config/settings_fields.py).
    type_hint: str = "str"

    def parse(self, raw: str) -> Any:
        return raw

    def mask(self, raw: str) -> str:
        """The raw value with anything secret in it hidden (nothing, unless the parser knows where it sits)."""
        return raw

    def show(self, raw: str) -> str:
        """How a raw value may appear in an error message: masked, then cut (so a cut never uncovers a secret)."""
        return clip(self.mask(raw))


class Text(Parser):
    def __init__(self, allowed: str = "any text") -> None:
        self.allowed = allowed


class Pattern(Parser):
    """Text matching a regular expression (empty allowed when ``optional``)."""

    def __init__(self, regex: str, allowed: str, optional: bool = True) -> None:
        self.regex = re.compile(regex)
        self.allowed = allowed + (", or empty" if optional else "")
        self.optional = optional

    def parse(self, raw: str) -> str:
        value = raw.strip()
        if not value and self.optional:
            return ""
        if not self.regex.fullmatch(value):
            raise ValueError("has characters that are not allowed")
        return value


class Integer(Parser):
    type_hint = "int"

    def __init__(self, minimum: int | None = None, maximum: int | None = None) -> None:
        self.minimum, self.maximum = minimum, maximum
        low = "" if minimum is None else f" >= {minimum}"
        high = "" if maximum is None else f" <= {maximum}"
        self.allowed = "an integer" + (low + ("," if low and high else "") + high)

    def parse(self, raw: str) -> int:
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise ValueError("is not an integer") from None
        if self.minimum is not None and value < self.minimum:
            raise ValueError("is below the minimum")
        if self.maximum is not None and value > self.maximum:
            raise ValueError("is above the maximum")
        return value


TRUE_WORDS = ("yes", "true", "1", "on")
FALSE_WORDS = ("no", "false", "0", "off", "")


class Boolean(Parser):
    """The one yes/no parser: the same words for every variable."""

    allowed = "yes/true/1/on or no/false/0/off (empty means no)"
    type_hint = "bool"

    def parse(self, raw: str) -> bool:
        word = raw.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ValueError("is not a yes/no word")


class Choice(Parser):
    """One of a fixed set of words, case-insensitive; ``aliases`` map extra spellings."""

    def __init__(self, choices: Sequence[str], aliases: dict[str, str] | None = None, optional: bool = False) -> None:
        self.choices = tuple(choices)
        self.aliases = {k.lower(): v for k, v in (aliases or {}).items()}
        self.optional = optional
        self.allowed = "one of " + ", ".join(self.choices) + (", or empty" if optional else "")
        self.type_hint = "Literal[" + ", ".join(f'"{c}"' for c in self.choices) + "]" + (" | None" if optional else "")

    def parse(self, raw: str) -> str | None:
        word = raw.strip()
        if not word and self.optional:
            return None
        for choice in self.choices:
            if word.lower() == choice.lower():
                return choice
        if word.lower() in self.aliases:
            return self.aliases[word.lower()]
        raise ValueError("is not a known value")


class Url(Parser):
    """A URL whose scheme is one of ``schemes``; passwords are masked in messages."""

    def __init__(self, schemes: Sequence[str], optional: bool = False) -> None:
        self.schemes = tuple(schemes)
        self.optional = optional
        self.allowed = "a URL starting with " + " or ".join(f"{s}://" for s in self.schemes) + (
            ", or empty" if optional else "")
        self.type_hint = "str | None" if optional else "str"

    def parse(self, raw: str) -> str | None:
        value = raw.strip()
        if not value and self.optional:
            return None
        parts = urlsplit(value)
        if parts.scheme not in self.schemes:
            raise ValueError(f"has an unknown URL scheme {parts.scheme!r}" if parts.scheme else "is not a URL")
        try:
            parts.port  # noqa: B018 - raises on a non-numeric port
        except ValueError:
            raise ValueError("has an invalid port") from None
        if parts.scheme in ("redis", "rediss") and not parts.hostname:
            raise ValueError("has no host")
        return value

    def mask(self, raw: str) -> str:
        return mask_url(raw)


class FilePath(Parser):
    """A path to a readable file (empty means unset)."""

    allowed = "a path to a readable file, or empty"
    type_hint = "str | None"

    def parse(self, raw: str) -> str | None:
        path = raw.strip()
        if not path:
            return None
        if not os.path.isfile(path):
            raise ValueError("is not an existing file")
        if not os.access(path, os.R_OK):
            raise ValueError("is not readable")
        return path


class DirectoryPath(Parser):
    """An absolute path of a directory the process creates if it is missing (it is not checked for writability here:
    a read-only directory is reported by the component that writes to it)."""

    allowed = "an absolute directory path (created when missing), each name at most 255 bytes"

    def parse(self, raw: str) -> str:
        path = raw.strip()
        if not path:
            raise ValueError("is empty")
        if not path.startswith("/"):
            raise ValueError("is not an absolute path")
        if any(len(os.fsencode(name)) > 255 for name in path.split("/")):
            raise ValueError("has a name longer than 255 bytes")
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError("is not a directory")
        return path


class WordList(Parser):
    """Comma-separated words, each matching ``valid``."""

    type_hint = "tuple[str, ...]"

    def __init__(self, valid: Callable[[str], bool], allowed: str, *, optional: bool = False) -> None:
        self.valid = valid
        self.allowed = allowed
        self.optional = optional

    def parse(self, raw: str) -> tuple[str, ...]:
        words = tuple(w.strip() for w in raw.split(",") if w.strip())
        if not words:
            if self.optional and not raw.strip():
                return ()
            raise ValueError("is empty")
        for word in words:
            if not self.valid(word):
                raise ValueError(f"contains the invalid entry {word!r}")
        return words


class Credentials(Parser):
    """``user:password[,user:password...]`` on one line (Flower's basic auth), or empty.

    The first ``:`` of an entry ends the user name, so a password may hold ``:`` but no ``,`` (the separator).
    Reasons never quote the value: it is a secret.
    """

    allowed = ("user:password[,user:password...] on one line, no whitespace in a user name, no comma in a password, "
               "or empty")

    def parse(self, raw: str) -> str:
        value = raw.strip()
        if not value:
            return ""
        if "\n" in value or "\r" in value:
            raise ValueError("spans more than one line")
        for number, entry in enumerate(value.split(","), start=1):
            user, colon, password = entry.partition(":")
            if not colon or not user or not password:
                raise ValueError(f"entry {number} is not user:password")
            if any(char.isspace() for char in user):
                raise ValueError(f"entry {number} has whitespace in its user name")
        return value


# Which process needs a variable. `app`: the Celery app and every producer (importing worker.app validates only
# these); `worker`: the `celery worker` command line; `health`: the worker's health files; `flower`: Flower;
# `api`: the task and run API service (`python -m worker api`). The launcher (`python -m config check`) validates
# all of them.
SCOPES = ("app", "worker", "health", "flower", "api")


@dataclass(frozen=True)
class Option:
    """One environment variable: its name, parser, default (as raw text), meaning and the scope that needs it."""

    name: str
    parser: Parser
    default: str
    help: str
    scope: str
    secret: bool = False

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"{self.name}: scope {self.scope!r} is not one of {SCOPES}")

    @property
    def attribute(self) -> str:
        """The name of its field in :class:`config.settings_fields.Settings`."""
        return self.name.lower()

    def parse(self, raw: str) -> Any:
        try:
            if len(raw) > MAX_VALUE_CHARS:
                raise ValueError(f"is longer than {MAX_VALUE_CHARS} characters")
            if _CONTROL.search(raw.strip()):
                raise ValueError("contains a newline or another control character")
            return self.parser.parse(raw)
        except ValueError as exc:
            shown = "(hidden)" if self.secret and not isinstance(self.parser, Url) else self.parser.show(raw)
            raise ConfigError(f"{self.name}={shown} {exc}; allowed: {self.parser.allowed}") from None

    def show(self, value: Any) -> str:
        """A parsed value as `python -m config check` prints it: secrets hidden, booleans as yes/no."""
        if self.secret and isinstance(self.parser, Url):
            return mask_url(value)
        if self.secret:
            return "(set)" if value else "(empty)"
        if isinstance(value, bool):
            return "yes" if value else "no"  # what the user writes (entrypoint.sh compares with `yes`)
        return str(value)
