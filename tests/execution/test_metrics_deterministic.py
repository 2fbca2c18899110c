"""Every deterministic metric kind, passing and failing, with the reason it gives; misconfigured metrics."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

from worker.execution.metrics import Evaluator
from worker.execution.metrics.deterministic import SCAN_LIMIT
from worker.execution.metrics.timed_regex import TIMEOUT_REASON
from worker.execution.spec import DETERMINISTIC_KINDS, EvaluationCase, JudgeSettings, MetricOutcome, MetricSpec

ANSWER = "We will refund your order within 5 days.\nThank you!"


def evaluate(kind: str, parameters: dict[str, Any], output: str = ANSWER, latency_ms: float | None = 50.0,
             **metric: Any) -> MetricOutcome:
    spec = MetricSpec(id="m1", name=f"{kind} check", kind=kind, parameters=parameters, **metric)
    case = EvaluationCase(input="Where is my money?", output=output, latency_ms=latency_ms)

    async def run() -> MetricOutcome:
        async with Evaluator(JudgeSettings()) as evaluator:
            return await evaluator.evaluate(spec, case)

    return asyncio.run(run())


# (kind, parameters, output, passed, reason)
CASES: list[tuple[str, dict[str, Any], str, bool, str]] = [
    ("contains", {"value": "refund"}, ANSWER, True, 'output contains "refund"'),
    ("contains", {"value": "Refund"}, ANSWER, False, 'output does not contain "Refund"'),
    ("icontains", {"value": "REFUND"}, ANSWER, True, 'output contains "REFUND" (ignoring case)'),
    ("icontains", {"value": "cancel"}, ANSWER, False, 'output does not contain "cancel" (ignoring case)'),
    ("not_contains", {"value": "sorry"}, ANSWER, True, 'output does not contain "sorry"'),
    ("not_contains", {"value": "refund"}, ANSWER, False, 'output contains "refund"'),
    ("equals", {"value": "OK"}, "OK\n", True, 'output equals "OK"'),
    ("equals", {"value": "OK"}, "ok", False, 'output "ok" does not equal "OK"'),
    ("equals", {"value": "OK", "case_sensitive": False}, "ok", True, 'output equals "OK"'),
    ("starts_with", {"value": "We will"}, ANSWER, True, 'output starts with "We will"'),
    ("starts_with", {"value": "Thank"}, ANSWER, False, 'output does not start with "Thank"'),
    ("starts_with", {"value": "we WILL", "case_sensitive": False}, ANSWER, True, 'output starts with "we WILL"'),
    ("contains_any", {"values": ["cancel", "refund"]}, ANSWER, True, 'output contains "refund"'),
    ("contains_any", {"values": ["cancel", "sorry"]}, ANSWER, False, 'output contains none of "cancel", "sorry"'),
    ("contains_any", {"values": ["REFUND"], "case_sensitive": False}, ANSWER, True, 'output contains "REFUND"'),
    ("contains_all", {"values": ["refund", "days"]}, ANSWER, True, "output contains all 2 values"),
    ("contains_all", {"values": ["refund", "cancel", "Sorry"]}, ANSWER, False,
     'output does not contain "cancel", "Sorry"'),
    ("contains_all", {"values": ["REFUND", "thank"], "case_sensitive": False}, ANSWER, True,
     "output contains all 2 values"),
    ("regex", {"pattern": r"\d+ days"}, ANSWER, True, r"output matches /\d+ days/"),
    ("regex", {"pattern": r"^\d+ weeks"}, ANSWER, False, r"output does not match /^\d+ weeks/"),
    ("regex", {"pattern": "^thank you!$", "flags": "im"}, ANSWER, True, "output matches /^thank you!$/"),
    ("regex", {"pattern": "order.within", "flags": ["s"]}, "order\nwithin", True, "output matches /order.within/"),
    ("is_json", {}, '{"a": 1}', True, "output is valid JSON"),
    ("is_json", {}, ANSWER, False, "output is not valid JSON: Expecting value"),
    ("is_json", {"schema": {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}},
     '{"a": 1}', True, "output is valid JSON and matches the schema"),
    ("is_json", {"schema": {"type": "object", "properties": {"a": {"type": "integer"}}}},
     '{"a": "x"}', False, "output does not match the schema at /a: 'x' is not of type 'integer'"),
    ("is_json", {"schema": '{"type": "array"}'}, "[1]", True, "output is valid JSON and matches the schema"),
    ("is_json", {"schema": {"type": "object", "required": ["a"]}}, "{}", False,
     "output does not match the schema at /: 'a' is a required property"),
    # Draft 2020-12 keywords are understood: prefixItems constrains the first element.
    ("is_json", {"schema": {"prefixItems": [{"type": "string"}]}}, "[1]", False,
     "output does not match the schema at /0: 1 is not of type 'string'"),
    ("latency_max_ms", {"max_ms": 100}, ANSWER, True, "latency 50 ms is within 100 ms"),
]


@pytest.mark.parametrize(("kind", "parameters", "output", "passed", "reason"), CASES,
                         ids=[f"{case[0]}-{index}" for index, case in enumerate(CASES)])
def test_deterministic_kind(kind: str, parameters: dict[str, Any], output: str, passed: bool, reason: str) -> None:
    outcome = evaluate(kind, parameters, output)
    assert (outcome.status, outcome.passed, outcome.score, outcome.reason) == \
        ("scored", passed, 1.0 if passed else 0.0, reason)
    assert outcome.metric_id == "m1" and outcome.name == f"{kind} check"
    assert outcome.judge_model is None and outcome.token_usage is None and outcome.duration_ms >= 0


def test_every_deterministic_kind_is_covered_passing_and_failing() -> None:
    for kind in DETERMINISTIC_KINDS:
        results = {passed for case_kind, _, _, passed, _ in CASES if case_kind == kind}
        if kind != "latency_max_ms":  # failing latency: test_latency_over_the_limit_fails
            assert results == {True, False}, kind


def test_latency_over_the_limit_fails_and_unmeasured_latency_is_not_scored() -> None:
    slow = evaluate("latency_max_ms", {"max_ms": 100}, latency_ms=130.0)
    assert (slow.status, slow.passed, slow.score, slow.reason) == \
        ("scored", False, 0.0, "latency 130 ms exceeds 100 ms")
    exact = evaluate("latency_max_ms", {"max_ms": 100}, latency_ms=100.0)
    assert exact.passed is True
    unknown = evaluate("latency_max_ms", {"max_ms": 100}, latency_ms=None)
    assert (unknown.status, unknown.passed, unknown.score) == ("not_scored", None, None)
    assert "no latency" in unknown.reason


def test_threshold_is_ignored_for_deterministic_metrics() -> None:
    outcome = evaluate("contains", {"value": "refund"}, threshold=5.0, threshold_operator=">")
    assert (outcome.passed, outcome.score) == (True, 1.0)


# (kind, parameters, words the error reason must hold)
BROKEN: list[tuple[str, dict[str, Any], str]] = [
    ("regex", {"pattern": "(unclosed"}, "does not compile"),
    ("regex", {"pattern": "a", "flags": "q"}, "unknown regex flag 'q'"),
    ("regex", {}, "parameter 'pattern'"),
    ("is_json", {"schema": {"type": "no-such-type"}}, "invalid JSON schema"),
    ("is_json", {"schema": {"minLength": -1}}, "invalid JSON schema"),
    ("is_json", {"schema": "{not json"}, "not JSON"),
    ("is_json", {"schema": {"$ref": "https://example.com/schema.json"}}, "cannot be applied"),
    ("contains", {}, "parameter 'value'"),
    ("contains", {"value": 5}, "parameter 'value'"),
    ("equals", {"value": "x", "case_sensitive": "no"}, "case_sensitive"),
    ("contains_any", {"values": "refund"}, "parameter 'values'"),
    ("contains_all", {"values": []}, "parameter 'values'"),
    ("contains_all", {"values": ["a", 3]}, "only non-empty strings"),
    ("latency_max_ms", {"max_ms": "100"}, "parameter 'max_ms'"),
    ("latency_max_ms", {"max_ms": 0}, "parameter 'max_ms'"),
    ("no_such_kind", {}, "unknown metric kind"),
]


@pytest.mark.parametrize(("kind", "parameters", "words"), BROKEN,
                         ids=[f"{case[0]}-{index}" for index, case in enumerate(BROKEN)])
def test_misconfigured_metric_is_an_error_not_a_failure(kind: str, parameters: dict[str, Any], words: str) -> None:
    outcome = evaluate(kind, parameters, output='{"a": 1}')
    assert (outcome.status, outcome.passed, outcome.score) == ("error", None, None)
    assert words in outcome.reason


def test_regex_scans_only_the_first_characters_of_a_long_answer() -> None:
    tail = "x" * SCAN_LIMIT + "NEEDLE"
    outcome = evaluate("regex", {"pattern": "NEEDLE"}, output=tail)
    assert outcome.passed is False
    assert f"first {SCAN_LIMIT} characters searched" in outcome.reason
    assert evaluate("regex", {"pattern": "NEEDLE"}, output="NEEDLE" + tail).passed is True


def test_deeply_nested_json_is_a_failure_not_a_crash() -> None:
    outcome = evaluate("is_json", {}, output="[" * 100_000)
    assert (outcome.status, outcome.passed) == ("scored", False)


def test_quoted_values_in_reasons_are_escaped_and_cut() -> None:
    outcome = evaluate("contains", {"value": 'say "hi"\n' + "z" * 200})
    assert outcome.reason.startswith('output does not contain "say \\"hi\\"\\nzz')
    assert outcome.reason.endswith('..."') and len(outcome.reason) < 150


# -- catastrophic backtracking: liveness, not speed; 5 s is far above the 1 s budget and far below "frozen" ----------

BACKTRACKS = "(a|aa)+$"  # exponential in the regex package too, unlike (a+)+$ which it short-circuits
DOOMED = "a" * 40 + "b"
LIVENESS_S = 5.0


def timed(kind: str, parameters: dict[str, Any], output: str) -> tuple[MetricOutcome, float]:
    started = time.monotonic()
    outcome = evaluate(kind, parameters, output=output)
    return outcome, time.monotonic() - started


def test_catastrophic_regex_is_an_error_after_the_timeout() -> None:
    outcome, elapsed = timed("regex", {"pattern": BACKTRACKS}, DOOMED)
    assert (outcome.status, outcome.passed, outcome.score) == ("error", None, None)
    assert outcome.reason == TIMEOUT_REASON == (
        "regex evaluation timed out after 1 s (catastrophic backtracking?)")
    assert elapsed < LIVENESS_S


def test_the_reviewed_pattern_finishes_and_fails() -> None:
    outcome, elapsed = timed("regex", {"pattern": "(a+)+$", "flags": "i"}, "a" * 35 + "b")
    assert (outcome.status, outcome.passed) == ("scored", False)
    assert elapsed < LIVENESS_S


def test_event_loop_and_other_threads_keep_running_during_a_catastrophic_regex() -> None:
    # A lease-renewal thread must keep ticking while the loop's thread matches: regex releases the GIL on str.
    ticks: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.01):
            ticks.append(time.monotonic())

    spec = MetricSpec(id="m1", name="regex check", kind="regex", parameters={"pattern": BACKTRACKS})
    case = EvaluationCase(input="q", output=DOOMED, latency_ms=None)

    async def run() -> tuple[MetricOutcome, bool]:
        async with Evaluator(JudgeSettings()) as evaluator:
            sleeper = asyncio.create_task(asyncio.sleep(0.01, result=True))
            await asyncio.sleep(0)
            outcome = await evaluator.evaluate(spec, case)
            return outcome, await asyncio.wait_for(sleeper, LIVENESS_S)

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    started = time.monotonic()
    try:
        outcome, slept = asyncio.run(run())
    finally:
        stop.set()
        ticker.join()
    assert outcome.status == "error" and slept is True
    assert time.monotonic() - started < LIVENESS_S
    during = [at for at in ticks if started + 0.2 < at < started + 0.8]
    assert len(during) >= 10, f"only {len(during)} ticks while matching: the GIL was held"


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"a": {"type": "string", "pattern": BACKTRACKS}}},
    {"type": "object", "patternProperties": {BACKTRACKS: {"type": "integer"}}},
    # jsonschema matches these keys with re itself, for additionalProperties: the pre-check must stop it first.
    {"type": "object", "additionalProperties": False, "patternProperties": {BACKTRACKS: {}}},
    {"$defs": {"d": {"patternProperties": {BACKTRACKS: {}}}}, "$ref": "#/$defs/d", "unevaluatedProperties": False},
], ids=["pattern", "patternProperties", "additionalProperties", "unevaluatedProperties"])
def test_catastrophic_schema_pattern_is_an_error_after_the_timeout(schema: dict[str, Any]) -> None:
    answer = json.dumps({"a": DOOMED, DOOMED: 1})
    outcome, elapsed = timed("is_json", {"schema": schema}, answer)
    assert (outcome.status, outcome.passed) == ("error", None)
    assert outcome.reason == f"is_json: {TIMEOUT_REASON}"
    assert elapsed < LIVENESS_S


def test_schema_patterns_still_validate() -> None:
    schema = {"type": "object", "properties": {"id": {"pattern": "^[A-Z]{2}\\d+$"}},
              "patternProperties": {"^x-": {"type": "string"}}, "additionalProperties": False}
    assert evaluate("is_json", {"schema": schema}, output='{"id": "AB12", "x-note": "ok"}').passed is True
    bad_id = evaluate("is_json", {"schema": schema}, output='{"id": "ab12"}')
    assert bad_id.passed is False and "does not match" in bad_id.reason
    assert evaluate("is_json", {"schema": schema}, output='{"x-note": 3}').passed is False
    assert evaluate("is_json", {"schema": schema}, output='{"other": 3}').passed is False
