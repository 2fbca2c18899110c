"""One test's verdict from its metric outcomes (the rule is in the package docstring)."""

from __future__ import annotations

from collections.abc import Sequence

from worker.execution.spec import MetricOutcome


def test_verdict(outcomes: Sequence[MetricOutcome]) -> tuple[str, str]:
    """``("pass" | "fail" | "not_scored", reason)``."""
    if not outcomes:
        return "not_scored", "no metrics configured"
    scored = [outcome for outcome in outcomes if outcome.status == "scored"]
    failed = [outcome for outcome in scored if outcome.passed is not True]
    if failed:
        return "fail", "; ".join(f"{outcome.name}: {outcome.reason}" for outcome in failed)
    unscored = [outcome for outcome in outcomes if outcome.status != "scored"]
    if scored:
        reason = f"{len(scored)} of {len(outcomes)} metrics passed"
        if unscored:
            reason += "; not scored: " + "; ".join(f"{outcome.name}: {outcome.reason}" for outcome in unscored)
        return "pass", reason
    return "not_scored", "; ".join(f"{outcome.name}: {outcome.reason}" for outcome in unscored)


# Its name starts with "test": keep pytest from collecting it in test modules that import it.
test_verdict.__test__ = False  # type: ignore[attr-defined]
