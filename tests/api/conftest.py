"""The API service as a real process, a real worker, Redis and PostgreSQL, and an endpoint server on loopback."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import WorkerProcess, start_worker_process
from tests.support.api_client import ApiClient, ApiProcess, start_api_process
from tests.support.endpoint_server import EndpointServer
from tests.support.execution_data import Configuration, ExecutionData
from tests.support.secret_watch import register_secret
from worker.api.tokens import mint
from worker.dev.services import free_port

EXECUTION_ENV = {"EXECUTION_ALLOW_PRIVATE_TARGETS": "yes", "EXECUTION_LEASE_SECONDS": "10",
                 "EXECUTION_SWEEP_INTERVAL": "0"}


@pytest.fixture(scope="session")
def api_keys() -> tuple[str, ...]:
    key = secrets.token_hex(32)
    register_secret("API_TOKEN_SECRET of the api tests", key)
    return (key,)


@pytest.fixture(scope="module")
def api_env(session_env: dict[str, str], api_keys: tuple[str, ...]) -> dict[str, str]:
    return {**session_env, **EXECUTION_ENV, "API_TOKEN_SECRET": ",".join(api_keys)}


@pytest.fixture(scope="module")
def data(migrated_database) -> Iterator[ExecutionData]:  # type: ignore[no-untyped-def]
    made = ExecutionData(migrated_database.owner_url)
    yield made
    made.close()


@pytest.fixture(scope="module")
def server() -> Iterator[EndpointServer]:
    with EndpointServer() as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_endpoint(request: pytest.FixtureRequest) -> None:
    if "server" in request.fixturenames:
        endpoint = request.getfixturevalue("server")
        endpoint.configure()
        endpoint.release()


@pytest.fixture(scope="module")
def api_worker(api_env: dict[str, str], run_dir: Path, client_app) -> Iterator[WorkerProcess]:  # type: ignore[no-untyped-def]
    worker = start_worker_process(api_env, run_dir, "prefork", 4, ping_app=client_app)
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def api(api_env: dict[str, str], run_dir: Path) -> Iterator[ApiProcess]:
    process = start_api_process(api_env, run_dir, free_port())
    yield process
    process.stop()


@pytest.fixture(scope="module")
def tenant(data: ExecutionData, api: ApiProcess, api_keys: tuple[str, ...], server: EndpointServer):  # type: ignore[no-untyped-def]
    """Factory: an organization with a configuration of ``tests`` tests against the endpoint server, and a client
    holding a token of its user."""

    def make(tests: int = 3, **options: object) -> tuple[Configuration, ApiClient]:
        configuration = data.configuration(server.url + "/chat", tests, **options)
        token = mint(api_keys, configuration.organization_id, configuration.user_id)
        return configuration, ApiClient(api.url, token)

    return make
