"""worker.execution.load: every column of an endpoint and a metric reaches its spec, secrets decrypted; metrics of
the test set and the configuration once each, by name; settings onto JudgeSettings and RetryPolicy."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from cryptography.fernet import Fernet

from config import load_settings
from worker.db.models import (
    Endpoint,
    Metric,
    Organization,
    TestConfiguration,
    TestConfigurationMetric,
    TestSet,
    TestSetMetric,
)
from worker.db.secrets import SecretCipher, SecretDecryptionError, SecretKeyMissingError
from worker.db.session import tenant_session
from worker.execution.load import (
    EndpointNotFoundError,
    judge_settings,
    load_endpoint,
    load_metrics,
    retry_policy,
)
from worker.execution.spec import EndpointAuth, EndpointSpec, JudgeSettings, MetricSpec, RetryPolicy

TOKEN, CLIENT_SECRET = "bearer-secret-123", "client-secret-456"


@pytest.fixture(scope="module")
def cipher() -> SecretCipher:
    return SecretCipher([Fernet.generate_key().decode()])


def _org(engine) -> uuid.UUID:  # type: ignore[no-untyped-def]
    org = uuid.uuid4()
    with tenant_session(org, engine=engine) as db:
        db.add(Organization(id=org, name="load"))
    return org


def test_endpoint_maps_every_field(owner_engine, runtime_engine, cipher) -> None:
    org = _org(owner_engine)
    with tenant_session(org, engine=owner_engine) as db:
        row = Endpoint(
            organization_id=org, name="full", url="https://api.example.invalid/chat", method="PUT",
            headers={"X-Trace": "on", "X-Count": 3, "X-Flag": True}, timeout_seconds=12,
            query_params={"version": "2", "page": 1}, request_mapping={"q": "{{ input }}", "n": [1, "{{ x }}"]},
            request_body_template="plain {{ input }}", response_format="text",
            response_mapping={"output": "$.answer", "context": "$.ctx"}, auth_type="oauth2_client_credentials",
            auth_header_name="X-Key", auth_token_encrypted=cipher.encrypt(TOKEN),
            oauth_token_url="https://auth.example.invalid/token", oauth_client_id="client-1",
            oauth_client_secret_encrypted=cipher.encrypt(CLIENT_SECRET), oauth_scopes=["a", "b"],
            oauth_audience="aud", max_concurrency=7)
        db.add(row)
        db.flush()
        endpoint_id = row.id
    with tenant_session(org, engine=runtime_engine) as db:
        spec = load_endpoint(db, str(endpoint_id), cipher)
    assert spec == EndpointSpec(
        id=str(endpoint_id), url="https://api.example.invalid/chat", method="PUT",
        headers={"X-Trace": "on", "X-Count": "3", "X-Flag": "true"}, query_params={"version": "2", "page": "1"},
        request_mapping={"q": "{{ input }}", "n": [1, "{{ x }}"]}, request_body_template="plain {{ input }}",
        response_format="text", response_mapping={"output": "$.answer", "context": "$.ctx"}, timeout_seconds=12.0,
        auth=EndpointAuth(kind="oauth2_client_credentials", token=TOKEN, header_name="X-Key",
                          token_url="https://auth.example.invalid/token", client_id="client-1",
                          client_secret=CLIENT_SECRET, scopes=("a", "b"), audience="aud"),
        max_concurrency=7)
    # Every field was compared with a non-default value (a new field of the spec must be added above).
    defaults = EndpointSpec(id="", url="")
    assert all(getattr(spec, f.name) != getattr(defaults, f.name) for f in dataclasses.fields(EndpointSpec))
    assert all(getattr(spec.auth, f.name) != getattr(EndpointAuth(), f.name) for f in dataclasses.fields(EndpointAuth))
    assert TOKEN not in repr(spec) and CLIENT_SECRET not in repr(spec)
    with pytest.raises(TypeError):
        spec.headers["X-New"] = "x"  # type: ignore[index]


def test_endpoint_defaults_and_secret_errors(owner_engine, runtime_engine, cipher) -> None:
    org, other = _org(owner_engine), _org(owner_engine)
    with tenant_session(org, engine=owner_engine) as db:
        plain = Endpoint(organization_id=org, name="plain", url="http://h/")
        secret = Endpoint(organization_id=org, name="s", url="http://h/", auth_type="bearer_token",
                          auth_token_encrypted=cipher.encrypt(TOKEN))
        db.add_all([plain, secret])
        db.flush()
        plain_id, secret_id = plain.id, secret.id
    with tenant_session(org, engine=runtime_engine) as db:
        spec = load_endpoint(db, plain_id, None)  # no secret: no key needed
        assert spec.auth == EndpointAuth() and spec.method == "POST" and spec.response_format == "json"
        assert spec.max_concurrency is None and spec.request_mapping is None
        with pytest.raises(SecretKeyMissingError, match="DB_ENCRYPTION_KEY") as missing:
            load_endpoint(db, secret_id, None)
        with pytest.raises(SecretDecryptionError, match="DB_ENCRYPTION_KEY") as wrong:
            load_endpoint(db, secret_id, SecretCipher([Fernet.generate_key().decode()]))
        for error in (missing.value, wrong.value):
            assert TOKEN not in str(error)
    with tenant_session(other, engine=runtime_engine) as db, pytest.raises(EndpointNotFoundError):
        load_endpoint(db, secret_id, cipher)  # another organization's endpoint does not exist here


def test_metrics_of_set_and_configuration_once_each_by_name(owner_engine, runtime_engine) -> None:
    org = _org(owner_engine)
    with tenant_session(org, engine=owner_engine) as db:
        test_set, unrelated_set = TestSet(organization_id=org, name="s"), TestSet(organization_id=org, name="u")
        endpoint = Endpoint(organization_id=org, name="e", url="http://h/")
        full = Metric(organization_id=org, name="b judge", kind="llm_judge", parameters={"k": [1]}, threshold=0.5,
                      threshold_operator=">=", evaluation_prompt="Is it right?", evaluation_steps=["one", "two"],
                      score_type="categorical", min_score=0.0, max_score=10.0, categories=["good", "bad"],
                      passing_categories=["good"], judge_provider="azure_openai", judge_model="gpt-x")
        shared = Metric(organization_id=org, name="a shared", kind="contains", parameters={"value": "x"})
        only_config = Metric(organization_id=org, name="c config", kind="regex", parameters={"pattern": "x+"})
        unused = Metric(organization_id=org, name="0 unused", kind="equals", parameters={"value": "y"})
        db.add_all([test_set, unrelated_set, endpoint, full, shared, only_config, unused])
        db.flush()
        config = TestConfiguration(organization_id=org, test_set_id=test_set.id, endpoint_id=endpoint.id)
        db.add(config)
        db.flush()
        db.add_all([TestSetMetric(organization_id=org, test_set_id=test_set.id, metric_id=full.id),
                    TestSetMetric(organization_id=org, test_set_id=test_set.id, metric_id=shared.id),
                    TestSetMetric(organization_id=org, test_set_id=unrelated_set.id, metric_id=unused.id),
                    TestConfigurationMetric(organization_id=org, test_configuration_id=config.id,
                                            metric_id=shared.id),
                    TestConfigurationMetric(organization_id=org, test_configuration_id=config.id,
                                            metric_id=only_config.id)])
        ids = {m.name: str(m.id) for m in (full, shared, only_config)}
    with tenant_session(org, engine=runtime_engine) as db:
        metrics = load_metrics(db, db.get(TestConfiguration, config.id))
    assert [m.name for m in metrics] == ["a shared", "b judge", "c config"]
    assert metrics[1] == MetricSpec(
        id=ids["b judge"], name="b judge", kind="llm_judge", parameters={"k": [1]}, threshold=0.5,
        threshold_operator=">=", evaluation_prompt="Is it right?", evaluation_steps=("one", "two"),
        score_type="categorical", min_score=0.0, max_score=10.0, categories=("good", "bad"),
        passing_categories=("good",), judge_provider="azure_openai", judge_model="gpt-x")
    defaults = MetricSpec(id="", name="", kind="")
    assert all(getattr(metrics[1], f.name) != getattr(defaults, f.name) for f in dataclasses.fields(MetricSpec))
    assert metrics[0] == MetricSpec(id=ids["a shared"], name="a shared", kind="contains", parameters={"value": "x"})


def test_settings_onto_judge_settings_and_retry_policy() -> None:
    env = {"ENV_FILE": "/nonexistent/.env", "GEMINI_API_KEY": "g-key", "GEMINI_MODEL_NAME": "gemini-x",
           "GEMINI_BASE_URL": "http://127.0.0.1:9", "AZURE_OPENAI_ENDPOINT": "https://az.example.invalid",
           "AZURE_OPENAI_API_KEY": "a-key", "AZURE_OPENAI_DEPLOYMENT_NAME": "dep",
           "AZURE_OPENAI_API_VERSION": "2025-01-01", "JUDGE_TIMEOUT_SECONDS": "7", "EXECUTION_MAX_ATTEMPTS": "5",
           "EXECUTION_RETRY_AFTER_CAP": "9"}
    settings = load_settings(environ=env, scopes=("worker",))
    retry = RetryPolicy(max_attempts=5, retry_after_cap=9.0)
    assert retry_policy(settings) == retry
    assert judge_settings(settings) == JudgeSettings(
        gemini_api_key="g-key", gemini_model="gemini-x", gemini_base_url="http://127.0.0.1:9",
        azure_endpoint="https://az.example.invalid", azure_api_key="a-key", azure_deployment="dep",
        azure_api_version="2025-01-01", timeout_seconds=7.0, retry=retry)
    empty = judge_settings(load_settings(environ={"ENV_FILE": "/nonexistent/.env"}, scopes=("worker",)))
    assert (empty.gemini_api_key, empty.azure_endpoint, empty.azure_api_key, empty.azure_deployment) == (None,) * 4
    assert empty == JudgeSettings()  # the defaults of config/options.py and spec.py agree
