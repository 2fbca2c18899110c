"""Rows and settings onto the plain values of worker.execution.spec: what the client, evaluator and lanes use.

Reads go through the caller's tenant session, so row-level security decides what exists: another organization's
endpoint is "not found", never someone else's row. Secrets are decrypted here and nowhere else.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from config import Settings
from worker.db.models import Endpoint, Metric, TestConfiguration, TestConfigurationMetric, TestSetMetric
from worker.db.secrets import SecretCipher, require_cipher
from worker.execution.spec import EndpointAuth, EndpointSpec, JudgeSettings, MetricSpec, RetryPolicy

__all__ = ["EndpointNotFoundError", "judge_settings", "load_endpoint", "load_metrics", "retry_policy"]

_DEFAULT_API_KEY_HEADER = "X-API-Key"


class EndpointNotFoundError(LookupError):
    """No endpoint with this id in the session's organization."""


def _frozen(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


def _strings(value: Mapping[str, Any] | None) -> Mapping[str, str]:
    # Headers and query parameters are text on the wire; JSON numbers or booleans stored there become text.
    return MappingProxyType({str(k): v if isinstance(v, str) else _json_text(v) for k, v in (value or {}).items()})


def _json_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _decrypt(cipher: SecretCipher | None, token: str | None, what: str) -> str | None:
    if token is None:
        return None
    return require_cipher(cipher, what).decrypt(token)


def load_endpoint(db: Session, endpoint_id: uuid.UUID | str, cipher: SecretCipher | None) -> EndpointSpec:
    """The endpoint as the client calls it, secrets decrypted.

    Raises EndpointNotFoundError, SecretKeyMissingError (a secret is stored but no DB_ENCRYPTION_KEY is set) or
    SecretDecryptionError (the keys do not open it).
    """
    row = db.get(Endpoint, endpoint_id if isinstance(endpoint_id, uuid.UUID) else uuid.UUID(str(endpoint_id)))
    if row is None:
        raise EndpointNotFoundError(f"endpoint {endpoint_id} not found in this organization")
    auth = EndpointAuth(
        kind=row.auth_type,  # type: ignore[arg-type] - the check constraint limits it to AUTH_KINDS
        token=_decrypt(cipher, row.auth_token_encrypted, f"endpoint {row.id}'s auth token"),
        header_name=row.auth_header_name or _DEFAULT_API_KEY_HEADER,
        token_url=row.oauth_token_url,
        client_id=row.oauth_client_id,
        client_secret=_decrypt(cipher, row.oauth_client_secret_encrypted, f"endpoint {row.id}'s OAuth client secret"),
        scopes=tuple(str(scope) for scope in row.oauth_scopes or ()),
        audience=row.oauth_audience,
    )
    return EndpointSpec(
        id=str(row.id),
        url=row.url,
        method=row.method,
        headers=_strings(row.headers),
        query_params=_strings(row.query_params),
        request_mapping=row.request_mapping,
        request_body_template=row.request_body_template,
        response_format=row.response_format,  # type: ignore[arg-type] - limited by a check constraint
        response_mapping=_strings(row.response_mapping),
        timeout_seconds=float(row.timeout_seconds),
        auth=auth,
        max_concurrency=row.max_concurrency,
    )


def metric_spec(row: Metric) -> MetricSpec:
    return MetricSpec(
        id=str(row.id),
        name=row.name,
        kind=row.kind,
        parameters=_frozen(row.parameters),
        threshold=row.threshold,
        threshold_operator=row.threshold_operator,
        evaluation_prompt=row.evaluation_prompt,
        evaluation_steps=tuple(str(step) for step in row.evaluation_steps or ()),
        score_type=row.score_type,
        min_score=row.min_score,
        max_score=row.max_score,
        categories=tuple(str(c) for c in row.categories or ()),
        passing_categories=tuple(str(c) for c in row.passing_categories or ()),
        judge_provider=row.judge_provider,
        judge_model=row.judge_model,
    )


def load_metrics(db: Session, test_configuration: TestConfiguration) -> list[MetricSpec]:
    """The metrics of the configuration's test set and of the configuration itself, each once, by name (then id,
    so that equal names keep one order)."""
    of_set = select(TestSetMetric.metric_id).where(TestSetMetric.test_set_id == test_configuration.test_set_id)
    of_configuration = select(TestConfigurationMetric.metric_id).where(
        TestConfigurationMetric.test_configuration_id == test_configuration.id)
    rows = db.scalars(select(Metric).where(or_(Metric.id.in_(of_set), Metric.id.in_(of_configuration)))
                      .order_by(Metric.name, Metric.id)).all()
    return [metric_spec(row) for row in rows]


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(max_attempts=settings.execution_max_attempts,
                       retry_after_cap=float(settings.execution_retry_after_cap))


def judge_settings(settings: Settings) -> JudgeSettings:
    """Provider credentials from the settings; an empty value means that provider is not configured (None)."""
    return JudgeSettings(
        gemini_api_key=settings.gemini_api_key or None,
        gemini_model=settings.gemini_model_name,
        gemini_base_url=settings.gemini_base_url,
        azure_endpoint=settings.azure_openai_endpoint or None,
        azure_api_key=settings.azure_openai_api_key or None,
        azure_deployment=settings.azure_openai_deployment_name or None,
        azure_api_version=settings.azure_openai_api_version,
        timeout_seconds=float(settings.judge_timeout_seconds),
        retry=retry_policy(settings),
        allowed_models=tuple(settings.judge_allowed_models),
    )
