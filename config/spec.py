"""Typed declarations for environment variables.

Each variable is declared once as an :class:`Option`; its parser knows how to turn the raw string
into a value and how to describe what is allowed, so error messages and the README table come from
the same place.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from config.masking import mask_url


class ConfigError(ValueError):
    """A configuration value is unusable; the message is one line fit for an operator."""


class Parser:
    """Turns a raw string into a typed value; raises ValueError with a short reason."""

    allowed: str = "any text"

    def parse(self, raw: str) -> Any:
        return raw

    def show(self, raw: str) -> str:
        """How a raw value may appear in an error message."""
        return repr(raw)


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
    allowed = "yes/true/1/on or no/false/0/off"

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
        self.allowed = "a URL starting with " + " or ".join(f"{s}://" for s in self.schemes)

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

    def show(self, raw: str) -> str:
        return repr(mask_url(raw))


class FilePath(Parser):
    """A path to a readable file (empty means unset)."""

    allowed = "a path to a readable file, or empty"

    def parse(self, raw: str) -> str | None:
        path = raw.strip()
        if not path:
            return None
        if not os.path.isfile(path):
            raise ValueError("is not an existing file")
        if not os.access(path, os.R_OK):
            raise ValueError("is not readable")
        return path


class WordList(Parser):
    """Comma-separated words, each matching ``valid``."""

    def __init__(self, valid: Callable[[str], bool], allowed: str) -> None:
        self.valid = valid
        self.allowed = allowed

    def parse(self, raw: str) -> tuple[str, ...]:
        words = tuple(w.strip() for w in raw.split(",") if w.strip())
        if not words:
            raise ValueError("is empty")
        for word in words:
            if not self.valid(word):
                raise ValueError(f"contains the invalid entry {word!r}")
        return words


@dataclass(frozen=True)
class Option:
    """One environment variable: its name, parser, default (as raw text) and meaning."""

    name: str
    parser: Parser
    default: str | None
    help: str
    group: str = "general"
    secret: bool = False
    required: bool = False
    aliases: tuple[str, ...] = field(default=())

    @property
    def key(self) -> str:
        return self.name.lower()

    def parse(self, raw: str) -> Any:
        try:
            return self.parser.parse(raw)
        except ValueError as exc:
            shown = "(hidden)" if self.secret and not isinstance(self.parser, Url) else self.parser.show(raw)
            raise ConfigError(f"{self.name}={shown} {exc}; allowed: {self.parser.allowed}") from None
