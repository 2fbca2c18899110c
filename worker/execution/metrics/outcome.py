"""Small helpers shared by the metric modules: building outcomes and quoting user text into reasons."""

from __future__ import annotations

import json
from collections.abc import Iterable

from worker.execution.spec import MetricOutcome, MetricSpec

#: Quoted values in reasons are cut here so one reason stays one readable line.
QUOTE_LIMIT = 80
REASON_LIMIT = 2000


def quote(value: str, limit: int = QUOTE_LIMIT) -> str:
    """``"refund"`` with escapes, so newlines and quotes in a value cannot make a reason ambiguous."""
    shown = value if len(value) <= limit else value[:limit] + "..."
    return json.dumps(shown, ensure_ascii=False)


def number(value: float) -> str:
    """130 -> "130", 130.25 -> "130.25": no float noise in reasons."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"


def clip(text: str, limit: int = REASON_LIMIT) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Last line of defence: no configured key ever leaves in a reason, whatever produced the text."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text


def scored(metric: MetricSpec, passed: bool, reason: str, *, score: float | None = None) -> MetricOutcome:
    return MetricOutcome(
        metric_id=metric.id, name=metric.name, status="scored",
        score=score if score is not None else (1.0 if passed else 0.0), passed=passed, reason=clip(reason),
    )


def error(metric: MetricSpec, reason: str) -> MetricOutcome:
    return MetricOutcome(metric_id=metric.id, name=metric.name, status="error", reason=clip(reason))


def not_scored(metric: MetricSpec, reason: str) -> MetricOutcome:
    return MetricOutcome(metric_id=metric.id, name=metric.name, status="not_scored", reason=clip(reason))
