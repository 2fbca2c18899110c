"""The plain values test execution passes between its parts: what to call, how to judge, and what came back.

Loaded from the database by worker.execution.load (secrets already decrypted), used by the endpoint client
(worker.execution.endpoint), the evaluator (worker.execution.metrics) and the run lanes (worker.execution.lane).
Nothing here touches the network or the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

AuthKind = Literal["none", "bearer_token", "api_key", "oauth2_client_credentials"]
ResponseFormat = Literal["json", "text"]
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
AUTH_KINDS: tuple[str, ...] = ("none", "bearer_token", "api_key", "oauth2_client_credentials")
RESPONSE_FORMATS: tuple[str, ...] = ("json", "text")

#: Why an endpoint call did not give an answer; stored as ``test_result.error_type``.
ERROR_TYPES: tuple[str, ...] = (
    "timeout", "connection", "http_5xx", "http_4xx", "rate_limited", "blocked_target", "response_too_large",
    "response_mapping", "request_template", "invalid_endpoint", "cancelled", "internal",
)

DETERMINISTIC_KINDS: tuple[str, ...] = (
    "contains", "icontains", "not_contains", "equals", "starts_with", "contains_any", "contains_all", "regex",
    "is_json", "latency_max_ms",
)
METRIC_KINDS: tuple[str, ...] = (*DETERMINISTIC_KINDS, "llm_judge")
SCORE_TYPES: tuple[str, ...] = ("binary", "numeric", "categorical")
THRESHOLD_OPERATORS: tuple[str, ...] = (">=", ">", "<=", "<", "=", "!=")
JUDGE_PROVIDERS: tuple[str, ...] = ("gemini", "azure_openai")

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class EndpointAuth:
    kind: AuthKind = "none"
    #: Bearer token or API key, decrypted.
    token: str | None = field(default=None, repr=False)
    #: Header that carries an API key.
    header_name: str = "X-API-Key"
    token_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    scopes: tuple[str, ...] = ()
    audience: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """An endpoint as the client calls it. ``request_mapping`` is a JSON template: every string in it is a
    sandboxed Jinja template, and a string that is exactly one ``{{ name }}`` becomes that variable's value with
    its JSON type. ``request_body_template`` is the escape for bodies that are not JSON (sent as text)."""

    id: str
    url: str
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    query_params: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    request_mapping: Any = None
    request_body_template: str | None = None
    response_format: ResponseFormat = "json"
    #: Field (``output``, ``context``, ``metadata``) to JSONPath; ``output`` defaults to the whole body for text.
    response_mapping: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    timeout_seconds: float = 30.0
    auth: EndpointAuth = EndpointAuth()
    #: Calls in flight to this endpoint across all workers and runs; None means no endpoint-wide limit.
    max_concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 10.0
    #: A 429's Retry-After longer than this is not waited for: the call ends ``rate_limited``.
    retry_after_cap: float = 60.0


@dataclass(frozen=True, slots=True)
class Invocation:
    """One test's call to the endpoint, after every retry."""

    ok: bool
    output: str | None = None
    context: Any = None
    metadata: Any = None
    http_status: int | None = None
    #: Latency of the last attempt, in milliseconds.
    latency_ms: float | None = None
    attempts: int = 0
    error_type: str | None = None
    #: One line for people; never holds a secret.
    error: str | None = None


@dataclass(frozen=True, slots=True)
class MetricSpec:
    id: str
    name: str
    kind: str
    #: Per kind: ``value`` (contains, icontains, not_contains, equals, starts_with), ``values`` (contains_any,
    #: contains_all), ``pattern`` and ``flags`` (regex), ``schema`` (is_json, optional), ``max_ms`` (latency_max_ms),
    #: ``case_sensitive`` (contains_any, contains_all, equals, starts_with; default true).
    parameters: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    threshold: float | None = None
    threshold_operator: str | None = None
    evaluation_prompt: str | None = None
    evaluation_steps: tuple[str, ...] = ()
    score_type: str = "binary"
    min_score: float | None = None
    max_score: float | None = None
    categories: tuple[str, ...] = ()
    passing_categories: tuple[str, ...] = ()
    #: ``gemini`` or ``azure_openai``; None means the one configured (Gemini first).
    judge_provider: str | None = None
    judge_model: str | None = None


@dataclass(frozen=True, slots=True)
class EvaluationCase:
    input: str
    output: str
    expected_response: str | None = None
    context: Any = None
    latency_ms: float | None = None


@dataclass(frozen=True, slots=True)
class MetricOutcome:
    metric_id: str
    name: str
    #: ``scored``, ``not_scored`` (no provider, nothing to judge) or ``error`` (the judge failed).
    status: str
    score: float | None = None
    passed: bool | None = None
    reason: str = ""
    judge_model: str | None = None
    #: ``{"prompt_tokens": n, "completion_tokens": n, "total_tokens": n}`` for judges.
    token_usage: Mapping[str, int] | None = None
    duration_ms: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "metric_id": self.metric_id, "name": self.name, "status": self.status, "score": self.score,
            "passed": self.passed, "reason": self.reason, "judge_model": self.judge_model,
            "token_usage": dict(self.token_usage) if self.token_usage is not None else None,
            "duration_ms": round(self.duration_ms, 3),
        }


@dataclass(frozen=True, slots=True)
class JudgeSettings:
    """Provider credentials, passed explicitly: never written to the process environment at run time."""

    gemini_api_key: str | None = field(default=None, repr=False)
    gemini_model: str = "gemini-2.0-flash"
    gemini_base_url: str = "https://generativelanguage.googleapis.com"
    azure_endpoint: str | None = None
    azure_api_key: str | None = field(default=None, repr=False)
    azure_deployment: str | None = None
    azure_api_version: str = "2024-10-21"
    timeout_seconds: float = 60.0
    retry: RetryPolicy = RetryPolicy()
    #: Models/deployments a metric may name besides the defaults above; "*" allows any (JUDGE_ALLOWED_MODELS).
    allowed_models: tuple[str, ...] = ()
