"""Reading a judge's reply: find the JSON verdict, check it against the metric's score type, decide pass or fail.

Score types:

- ``binary``: ``score`` is true/false or 1/0 (``"true"``/``"false"`` strings too); score 1.0 passes, 0.0 fails.
  Threshold and operator are not used.
- ``numeric``: ``score`` is a number within ``min_score..max_score`` (default 0..10); outside the range the
  verdict is rejected, not clamped, because a judge that ignores the range may have ignored the criteria too.
  It passes when ``score <operator> threshold`` holds; the operator defaults to ``>=`` and the threshold to the
  midpoint ``(min_score + max_score) / 2``. ``=`` and ``!=`` compare with a tolerance of 1e-9.
- ``categorical``: ``category`` is one of ``categories`` (compared ignoring case and surrounding whitespace,
  stored as configured); it passes when it is one of ``passing_categories``; score 1.0 or 0.0.

Any reply that does not fit raises ``VerdictError``; the evaluator turns it into an ``error`` outcome.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.execution.metrics.judge_prompt import score_range
from worker.execution.metrics.outcome import clip, number, quote
from worker.execution.spec import MetricSpec

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
    "=": lambda a, b: math.isclose(a, b, abs_tol=1e-9),
    "!=": lambda a, b: not math.isclose(a, b, abs_tol=1e-9),
}
_TRUE = {"true", "1", "yes", "pass", "passed"}
_FALSE = {"false", "0", "no", "fail", "failed"}


class VerdictError(ValueError):
    """The judge's reply cannot be used; the message says why in one line (it quotes at most a short excerpt)."""


class MetricConfigError(ValueError):
    """The metric cannot be judged as configured (no categories, empty range, unknown operator)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float
    passed: bool
    #: Why, for people: the rule applied and the judge's own reason.
    reason: str


def check_metric(metric: MetricSpec) -> None:
    """Raise MetricConfigError before any judge is paid for a metric whose verdict could not be read."""
    if not (metric.evaluation_prompt and metric.evaluation_prompt.strip()) and not metric.evaluation_steps:
        raise MetricConfigError("llm_judge needs an evaluation_prompt or evaluation_steps")
    if metric.score_type == "categorical":
        if not metric.categories:
            raise MetricConfigError("categorical judge needs categories")
        unknown = set(metric.passing_categories) - set(metric.categories)
        if unknown:
            raise MetricConfigError(f"passing categories not among the categories: {sorted(unknown)}")
    elif metric.score_type == "numeric":
        low, high = score_range(metric)
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise MetricConfigError(f"numeric judge needs min_score < max_score (got {low}..{high})")
        if metric.threshold_operator is not None and metric.threshold_operator not in _OPERATORS:
            raise MetricConfigError(f"unknown threshold_operator {quote(metric.threshold_operator)}")
    elif metric.score_type != "binary":
        raise MetricConfigError(f"unknown score_type {quote(metric.score_type)}")


def extract_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in ``text``: tolerates ```json fences and words before or after the object."""
    stripped = text.strip()
    try:
        whole = json.loads(stripped)
    except ValueError:
        whole = None
    if isinstance(whole, dict):
        return whole
    decoder = json.JSONDecoder()
    start = stripped.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(stripped, start)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
        start = stripped.find("{", start + 1)
    raise VerdictError(f"judge reply holds no JSON object: {quote(stripped, 120)}")


def parse_verdict(text: str, metric: MetricSpec) -> Verdict:
    data = extract_json_object(text)
    judge_reason = data.get("reason")
    judge_reason = clip(judge_reason.strip(), 1500) if isinstance(judge_reason, str) else ""
    if metric.score_type == "categorical":
        score, passed, rule = _categorical(data, metric)
    elif metric.score_type == "numeric":
        score, passed, rule = _numeric(data, metric)
    else:
        score, passed, rule = _binary(data)
    return Verdict(score=score, passed=passed, reason=f"{rule}: {judge_reason}" if judge_reason else rule)


def _binary(data: dict[str, Any]) -> tuple[float, bool, str]:
    if "score" not in data:
        raise VerdictError('judge verdict has no "score"')
    raw = data["score"]
    if isinstance(raw, bool):
        value = raw
    elif isinstance(raw, int | float) and raw in (0, 1):
        value = raw == 1
    elif isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
        value = raw.strip().lower() in _TRUE
    else:
        raise VerdictError(f"binary judge score must be true/false or 1/0, got {quote(json.dumps(raw), 40)}")
    return (1.0 if value else 0.0), value, "judge: pass" if value else "judge: fail"


def _numeric(data: dict[str, Any], metric: MetricSpec) -> tuple[float, bool, str]:
    if "score" not in data:
        raise VerdictError('judge verdict has no "score"')
    raw = data["score"]
    score: float | None = None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        score = float(raw)
    elif isinstance(raw, str):
        try:
            score = float(raw.strip())
        except ValueError:
            score = None
    if score is None or not math.isfinite(score):
        raise VerdictError(f"numeric judge score must be a number, got {quote(json.dumps(raw), 40)}")
    low, high = score_range(metric)
    if not low <= score <= high:
        raise VerdictError(f"judge score {number(score)} is outside {number(low)}..{number(high)}")
    symbol = metric.threshold_operator or ">="
    threshold = (low + high) / 2 if metric.threshold is None else float(metric.threshold)
    passed = _OPERATORS[symbol](score, threshold)
    verb = "meets" if passed else "does not meet"
    return score, passed, f"score {number(score)} {verb} {symbol} {number(threshold)}"


def _categorical(data: dict[str, Any], metric: MetricSpec) -> tuple[float, bool, str]:
    raw = data.get("category")
    if not isinstance(raw, str) or not raw.strip():
        raise VerdictError('judge verdict has no "category"')
    by_key = {category.strip().casefold(): category for category in metric.categories}
    category = by_key.get(raw.strip().casefold())
    if category is None:
        raise VerdictError(f"judge category {quote(raw, 40)} is not one of the metric's categories")
    passed = category in metric.passing_categories
    verb = "passes" if passed else "is not a passing category"
    return (1.0 if passed else 0.0), passed, f"category {quote(category)} {verb}"
