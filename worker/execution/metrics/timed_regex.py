"""Tenant regular expressions matched under a deadline, for the ``regex`` metric and JSON-schema patterns.

Python's ``re`` cannot be interrupted: ``(a|aa)+$`` against forty ``a`` and a ``b`` backtracks for hours while
holding the GIL, which froze the whole worker (lanes, lease renewals, cancellation) and then, after the lease
expired, the next worker that picked the test up. The ``regex`` package checks a ``timeout`` while it matches, so
one metric spends at most ``REGEX_TIMEOUT_S`` seconds matching, however many searches it makes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import jsonschema
import regex

#: Seconds one metric evaluation may spend matching regular expressions, all its searches together.
REGEX_TIMEOUT_S = 1.0
TIMEOUT_REASON = f"regex evaluation timed out after {REGEX_TIMEOUT_S:g} s (catastrophic backtracking?)"

FLAGS = {"i": regex.IGNORECASE, "m": regex.MULTILINE, "s": regex.DOTALL, "x": regex.VERBOSE, "a": regex.ASCII}


class RegexTimeout(Exception):
    """The evaluation's matching budget is spent."""


class PatternError(ValueError):
    """A schema pattern ``re`` accepted (``check_schema``) that ``regex`` does not compile."""


class Deadline:
    """One evaluation's matching budget, shared by all its searches."""

    def __init__(self, seconds: float = REGEX_TIMEOUT_S) -> None:
        self._end = time.monotonic() + seconds

    def search(self, pattern: regex.Pattern[str] | str, text: str) -> bool:
        remaining = self._end - time.monotonic()
        if remaining <= 0:
            raise RegexTimeout
        try:
            compiled = pattern if isinstance(pattern, regex.Pattern) else regex.compile(pattern)
        except (regex.error, OverflowError, RecursionError) as exc:
            raise PatternError(f"schema pattern does not compile: {exc}") from None
        try:
            return compiled.search(text, timeout=remaining) is not None
        except TimeoutError:
            raise RegexTimeout from None


# -- JSON schema -----------------------------------------------------------------------------------------------
# jsonschema matches ``pattern`` and ``patternProperties`` with ``re.search``; these two keywords are replaced by
# versions that search under the current evaluation's deadline.

_deadline: ContextVar[Deadline | None] = ContextVar("timed_regex_deadline", default=None)


def _search(pattern: str, text: str) -> bool:
    deadline = _deadline.get()
    if deadline is None:
        raise RuntimeError("schema patterns are matched only inside schema_deadline()")
    return deadline.search(pattern, text)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: Mapping[str, Any], instance: Any,
                        schema: Mapping[str, Any]) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


TimedDraft202012Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"pattern": _pattern, "patternProperties": _pattern_properties})


@contextmanager
def schema_deadline(schema: Any, document: Any) -> Iterator[None]:
    """Validate with ``TimedDraft202012Validator`` inside this; raises ``RegexTimeout`` when the budget is spent.

    ``additionalProperties`` and ``unevaluatedProperties`` still match ``patternProperties`` keys with ``re``
    inside jsonschema. Every (pattern, key) pair is tried here first under the deadline, so a pattern that
    backtracks on a key ends the evaluation before jsonschema reaches it.
    """
    deadline = Deadline()
    token = _deadline.set(deadline)
    try:
        patterns = set(_property_patterns(schema))
        if patterns:
            keys = set(_keys(document))
            for pattern in patterns:
                for key in keys:
                    deadline.search(pattern, key)
        yield
    finally:
        _deadline.reset(token)


def _property_patterns(schema: Any) -> Iterator[str]:
    # Walks every subschema, and also harmless non-schema values such as "const" objects: over-matching only
    # costs a few extra searches.
    if isinstance(schema, dict):
        found = schema.get("patternProperties")
        if isinstance(found, dict):
            yield from (key for key in found if isinstance(key, str))
        for value in schema.values():
            yield from _property_patterns(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _property_patterns(value)


def _keys(document: Any) -> Iterator[str]:
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            yield from value.keys()
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
