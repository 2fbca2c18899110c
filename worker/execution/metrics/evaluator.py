"""The Evaluator: one answer, each configured metric, one MetricOutcome per metric, never an exception.

Judge provider: the metric's ``judge_provider`` if set, else Gemini when ``gemini_api_key`` is configured, else
Azure OpenAI when its endpoint, key and deployment are. Neither configured, or the named one not configured:
the outcome is ``not_scored`` and says which variables to set.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Sequence
from dataclasses import replace
from types import TracebackType

import aiohttp

from worker.execution.metrics.azure_openai import azure_deployment, call_azure_openai
from worker.execution.metrics.deterministic import evaluate_deterministic
from worker.execution.metrics.gemini import call_gemini
from worker.execution.metrics.judge_prompt import build_judge_prompt
from worker.execution.metrics.outcome import clip, error, not_scored, quote, redact
from worker.execution.metrics.transport import JudgeCallError
from worker.execution.metrics.verdict import MetricConfigError, VerdictError, check_metric, parse_verdict
from worker.execution.spec import (
    DETERMINISTIC_KINDS,
    JUDGE_PROVIDERS,
    EvaluationCase,
    JudgeSettings,
    MetricOutcome,
    MetricSpec,
)

log = logging.getLogger("worker.execution.metrics")

NO_PROVIDER = "no LLM judge provider is configured (set GEMINI_API_KEY or AZURE_OPENAI_*)"
_NOT_CONFIGURED = {
    "gemini": "judge provider gemini is not configured (set GEMINI_API_KEY)",
    "azure_openai": "judge provider azure_openai is not configured (set AZURE_OPENAI_ENDPOINT, "
                    "AZURE_OPENAI_API_KEY and AZURE_OPENAI_DEPLOYMENT_NAME)",
}
_CALLS = {"gemini": call_gemini, "azure_openai": call_azure_openai}


class Evaluator:
    """Evaluates answers; reuses one aiohttp session for every judge call (its own unless one is passed in)."""

    def __init__(self, judges: JudgeSettings, *, session: aiohttp.ClientSession | None = None) -> None:
        self._judges = judges
        self._session = session
        self._owns_session = session is None
        self._secrets = (judges.gemini_api_key, judges.azure_api_key)

    async def __aenter__(self) -> Evaluator:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def evaluate_all(self, metrics: Sequence[MetricSpec], case: EvaluationCase) -> list[MetricOutcome]:
        """One outcome per metric, in the metrics' order; the judges are called concurrently."""
        return list(await asyncio.gather(*(self.evaluate(metric, case) for metric in metrics)))

    async def evaluate(self, metric: MetricSpec, case: EvaluationCase) -> MetricOutcome:
        started = time.perf_counter()
        try:
            outcome = await self._evaluate(metric, case)
        except Exception as exc:
            # A bug of ours must not end the run; the traceback goes to the log, redacted like everything else.
            text = redact("".join(traceback.format_exception(exc)), self._secrets)
            log.error("metric %s (%s): unexpected %s\n%s", metric.id, metric.kind, type(exc).__name__, text)
            outcome = error(metric, f"internal error while evaluating ({type(exc).__name__})")
        return replace(outcome, reason=redact(outcome.reason, self._secrets),
                       duration_ms=(time.perf_counter() - started) * 1000)

    async def _evaluate(self, metric: MetricSpec, case: EvaluationCase) -> MetricOutcome:
        if metric.kind in DETERMINISTIC_KINDS:
            return evaluate_deterministic(metric, case)
        if metric.kind == "llm_judge":
            return await self._judge(metric, case)
        return error(metric, f"unknown metric kind {quote(metric.kind)}")

    async def _judge(self, metric: MetricSpec, case: EvaluationCase) -> MetricOutcome:
        try:
            check_metric(metric)
        except MetricConfigError as exc:
            return error(metric, str(exc))
        provider = metric.judge_provider or self._default_provider()
        if provider is None:
            return not_scored(metric, NO_PROVIDER)
        if provider not in JUDGE_PROVIDERS:
            return error(metric, f"unknown judge provider {quote(provider)} (use {', '.join(JUDGE_PROVIDERS)})")
        if not self._configured(provider, metric):
            return not_scored(metric, _NOT_CONFIGURED[provider])
        if not self._model_allowed(provider, metric.judge_model):
            return not_scored(metric, f"judge model {quote(metric.judge_model or '')} is not allowed on this worker "
                                      "(JUDGE_ALLOWED_MODELS)")
        key = self._judges.gemini_api_key if provider == "gemini" else self._judges.azure_api_key
        if not _header_safe(key or ""):
            return error(metric, f"the {provider} API key holds characters an HTTP header cannot carry")
        prompt = build_judge_prompt(metric, case)
        try:
            reply = await _CALLS[provider](self._get_session(), self._judges, metric, prompt)
        except JudgeCallError as exc:
            return error(metric, f"{provider} judge: {exc}")
        try:
            verdict = parse_verdict(reply.text, metric)
        except VerdictError as exc:
            # The tokens were spent all the same, so the usage is kept with the error.
            return MetricOutcome(metric_id=metric.id, name=metric.name, status="error",
                                 reason=clip(f"{provider} judge: {exc}"), judge_model=reply.model,
                                 token_usage=reply.usage)
        return MetricOutcome(metric_id=metric.id, name=metric.name, status="scored", score=verdict.score,
                             passed=verdict.passed, reason=clip(verdict.reason), judge_model=reply.model,
                             token_usage=reply.usage)

    def _model_allowed(self, provider: str, model: str | None) -> bool:
        """A metric may name its judge's model, but the operator's keys pay for it: only the configured default
        and JUDGE_ALLOWED_MODELS are allowed."""
        default = self._judges.gemini_model if provider == "gemini" else self._judges.azure_deployment
        allowed = self._judges.allowed_models
        return not model or model == default or "*" in allowed or model in allowed

    def _default_provider(self) -> str | None:
        if self._judges.gemini_api_key:
            return "gemini"
        if self._judges.azure_endpoint and self._judges.azure_api_key and self._judges.azure_deployment:
            return "azure_openai"
        return None

    def _configured(self, provider: str, metric: MetricSpec) -> bool:
        if provider == "gemini":
            return bool(self._judges.gemini_api_key)
        return bool(self._judges.azure_endpoint and self._judges.azure_api_key
                    and azure_deployment(metric, self._judges))

    def _get_session(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop, so an Evaluator can be built outside one.
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session


def _header_safe(value: str) -> bool:
    """aiohttp rejects such a header with an exception that quotes the value: refuse before sending it."""
    return value.isprintable() and value == value.strip()
