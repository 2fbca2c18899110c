"""Deterministic metrics: checks on the answer text and the call's latency that need no model.

Every check scores 1.0 (passed) or 0.0 (failed); a metric's threshold and operator are ignored here, they apply
to numeric judge scores only. A metric that is misconfigured (missing parameter, regex that does not compile,
invalid JSON schema) gives an ``error`` outcome rather than a failure, so a typo in a metric is not reported as a
bad answer.

Regex: patterns are matched with the ``regex`` package under a deadline (``timed_regex``), so a pathological
pattern such as ``(a|aa)+$`` gives an ``error`` outcome after ``REGEX_TIMEOUT_S`` instead of freezing the worker.
Only the first ``SCAN_LIMIT`` characters of the answer are searched, which bounds the cost of ordinary patterns.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import jsonschema
import referencing.exceptions
import regex

from worker.execution.metrics.outcome import error, not_scored, number, quote, scored
from worker.execution.metrics.timed_regex import (
    FLAGS,
    TIMEOUT_REASON,
    Deadline,
    PatternError,
    RegexTimeout,
    TimedDraft202012Validator,
    schema_deadline,
)
from worker.execution.spec import EvaluationCase, MetricOutcome, MetricSpec

#: Characters of the answer a regex searches; the rest is not looked at (see the module docstring).
SCAN_LIMIT = 100_000


class ParameterError(ValueError):
    """A metric's parameters cannot be used; the message names the parameter and never holds the answer."""


def evaluate_deterministic(metric: MetricSpec, case: EvaluationCase) -> MetricOutcome:
    check = _CHECKS.get(metric.kind)
    if check is None:
        return error(metric, f"unknown metric kind {quote(metric.kind)}")
    try:
        return check(metric, case)
    except ParameterError as exc:
        return error(metric, f"{metric.kind}: {exc}")


# -- parameters ----------------------------------------------------------------------------------------------

def _text(params: Mapping[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or value == "":
        raise ParameterError(f"parameter {name!r} must be a non-empty string")
    return value


def _texts(params: Mapping[str, Any], name: str) -> list[str]:
    values = params.get(name)
    if isinstance(values, str) or not isinstance(values, list | tuple) or not values:
        raise ParameterError(f"parameter {name!r} must be a non-empty list of strings")
    if not all(isinstance(value, str) and value for value in values):
        raise ParameterError(f"parameter {name!r} must hold only non-empty strings")
    return list(values)


def _case_sensitive(params: Mapping[str, Any]) -> bool:
    value = params.get("case_sensitive", True)
    if not isinstance(value, bool):
        raise ParameterError("parameter 'case_sensitive' must be true or false")
    return value


def _fold(text: str, case_sensitive: bool) -> str:
    return text if case_sensitive else text.casefold()


# -- checks --------------------------------------------------------------------------------------------------

def _contains(metric: MetricSpec, case: EvaluationCase) -> MetricOutcome:
    value = _text(metric.parameters, "value")
    if value in case.output:
        return scored(metric, True, f"output contains {quote(value)}")
    return scored(metric, False, f"output does not contain {quote(value)}")


def _icontains(metric: MetricSpec, case: EvaluationCase) -> MetricOutcome:
    value = _text(metric.parameters, "value")
    if value.casefold() in case.output.casefold():
        return scored(metric, True, f"output contains {quote(value)} (ignoring case)")
    return scored(metric, False, f"output does not contain {quote(value)} (ignoring case)")


def _not_contains(metric: MetricSpec, case: EvaluationCase) -> MetricOutcome:
    value = _text(metric.parameters, "value")
    if value in case.output:
        return scored(metric, False, f"output contains {quote(value)}")
    return scored(metric, True, f"output does not contain {quote(value)}")


def _equals(metric: MetricSpec, case: EvaluationCase) -> MetricOutcome:
    # Surrounding whitespace is ignored: endpoints commonly end answers with a newline nobody means.
    value = metric.parameters.get("value")
    if not isinstance(value, str):
        raise ParameterError("parameter 'value' must be a string")
    sensitive = _case_sensitive(metric.parameters)
    if _fold(case.output.strip(), sensitive) == _fold(value.strip(), sensitive):
        return scored(metric, True, f"output equals {quote(value)}")
    return scored(metric, False, f"output {quote(case.output.strip())} does not equal {quote(value)}")


def _starts_with(metric: MetricSpec, case: EvaluationCase) -> MetricOutcome:
    value = _text(metric.parameters, "value")
    sensitive = _case_sensitive(metric.parameters)
    if _fold(case.output.lstrip(), sensitive).startswith(_fold(value, sensitive)):
        return scored(metric, True, f"output starts with {quote(value)}")
    return scored(metric, False, f"output does not start with {quote(value)}")


def _contains_any(metric: MetricSpec, case: EvaluationCase) -> MetricOutcome:
    values = _texts(metric.parameters, "values")
    sensitive = _case_sensitive(metric.parameters)
    output = _fold(case.output, sensitive)
    found = [value for value in values if _fold(value, sensitive) in output]
    if found:
        return scored(metric, True, f"output contains {quote(found[0])}")
    return scored(metric, False, "output contains none of " + ", ".join(quote(value) for value in values))


def _contains_all(metric: MetricSpec, case: EvaluationCase) -> MetricOutcome:
    values = _texts(metric.parameters, "values")
    sensitive = _case_sensitive(metric.parameters)
    output = _fold(case.output, sensitive)
    missing = [value for value in values if _fold(value, sensitive) not in output]
    if not missing:
        return scored(metric, True, f"output contains all {len(values)} values")
    return scored(metric, False, "output does not contain " + ", ".join(quote(value) for value in missing))


def _regex(metric: MetricSpec, case: EvaluationCase) -> MetricOutcome:
    pattern = _text(metric.parameters, "pattern")
    flags = 0
    raw_flags = metric.parameters.get("flags", "")
    letters = "".join(raw_flags) if isinstance(raw_flags, list | tuple) else raw_flags
    if not isinstance(letters, str):
        raise ParameterError("parameter 'flags' must be letters such as \"im\"")
    for letter in letters.lower():
        if letter not in FLAGS:
            raise ParameterError(f"unknown regex flag {letter!r} (use i, m, s, x, a)")
        flags |= FLAGS[letter]
    try:
        compiled = regex.compile(pattern, flags)
    except (regex.error, OverflowError, RecursionError) as exc:
        raise ParameterError(f"pattern {quote(pattern)} does not compile: {exc}") from None
    scanned = case.output[:SCAN_LIMIT]
    note = f" (first {SCAN_LIMIT} characters searched)" if len(case.output) > SCAN_LIMIT else ""
    try:
        found = Deadline().search(compiled, scanned)
    except RegexTimeout:
        return error(metric, TIMEOUT_REASON)
    if found:
        return scored(metric, True, f"output matches /{pattern}/{note}")
    return scored(metric, False, f"output does not match /{pattern}/{note}")


def _is_json(metric: MetricSpec, case: EvaluationCase) -> MetricOutcome:
    validator = _schema_validator(metric.parameters.get("schema"))
    try:
        document = json.loads(case.output)
    except (ValueError, RecursionError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        return scored(metric, False, f"output is not valid JSON: {detail}")
    if validator is None:
        return scored(metric, True, "output is valid JSON")
    try:
        with schema_deadline(validator.schema, document):
            problem = jsonschema.exceptions.best_match(validator.iter_errors(document))
    except (referencing.exceptions.Unresolvable, RecursionError) as exc:
        # $ref to anything outside the schema is not fetched (no network from a metric).
        return error(metric, f"is_json: the schema cannot be applied: {type(exc).__name__}")
    except RegexTimeout:
        return error(metric, f"is_json: {TIMEOUT_REASON}")
    except PatternError as exc:
        return error(metric, f"is_json: {exc}")
    if problem is None:
        return scored(metric, True, "output is valid JSON and matches the schema")
    where = "/" + "/".join(str(part) for part in problem.absolute_path)
    return scored(metric, False, f"output does not match the schema at {where}: {problem.message}")


def _schema_validator(schema: Any) -> jsonschema.protocols.Validator | None:
    if schema is None:
        return None
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError:
            raise ParameterError("parameter 'schema' is a string that is not JSON") from None
    if not isinstance(schema, dict | bool):
        raise ParameterError("parameter 'schema' must be a JSON schema object")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise ParameterError(f"invalid JSON schema: {exc.message}") from None
    return TimedDraft202012Validator(schema)


def _latency_max_ms(metric: MetricSpec, case: EvaluationCase) -> MetricOutcome:
    max_ms = metric.parameters.get("max_ms")
    if isinstance(max_ms, bool) or not isinstance(max_ms, int | float) or max_ms <= 0:
        raise ParameterError("parameter 'max_ms' must be a positive number")
    if case.latency_ms is None:
        return not_scored(metric, "no latency was measured for this answer")
    if case.latency_ms <= max_ms:
        return scored(metric, True, f"latency {number(case.latency_ms)} ms is within {number(max_ms)} ms")
    return scored(metric, False, f"latency {number(case.latency_ms)} ms exceeds {number(max_ms)} ms")


_CHECKS: dict[str, Callable[[MetricSpec, EvaluationCase], MetricOutcome]] = {
    "contains": _contains,
    "icontains": _icontains,
    "not_contains": _not_contains,
    "equals": _equals,
    "starts_with": _starts_with,
    "contains_any": _contains_any,
    "contains_all": _contains_all,
    "regex": _regex,
    "is_json": _is_json,
    "latency_max_ms": _latency_max_ms,
}
