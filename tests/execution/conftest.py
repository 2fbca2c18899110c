from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.endpoint_server import EndpointServer


@pytest.fixture(scope="module")
def server() -> Iterator[EndpointServer]:
    with EndpointServer() as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_behaviour(request: pytest.FixtureRequest) -> None:
    if "server" in request.fixturenames:
        request.getfixturevalue("server").configure()
