"""The Grafana dashboard in docs/grafana queries only metrics the worker exports, and shows every one of them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from worker.observability import METRIC_NAMES

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "worker-dashboard.json"
_METRIC = re.compile(r"\b(tenant_worker_[a-z_]+)")
_SUFFIXES = ("_bucket", "_sum", "_count")


def _queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queries += [variable["query"] for variable in dashboard["templating"]["list"] if variable["type"] == "query"]
    return queries


def exported_name(name: str) -> str:
    """The name a series belongs to: histograms export name_bucket/_sum/_count."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in METRIC_NAMES:
            return name.removesuffix(suffix)
    return name


def test_every_query_names_an_exported_metric() -> None:
    used = {exported_name(name) for query in _queries() for name in _METRIC.findall(query)}
    unknown = used - set(METRIC_NAMES)
    assert not unknown, f"the dashboard queries metrics the worker does not export: {unknown}"


def test_every_exported_metric_is_on_the_dashboard() -> None:
    used = {exported_name(name) for query in _queries() for name in _METRIC.findall(query)}
    assert set(METRIC_NAMES) <= used, set(METRIC_NAMES) - used


def test_histogram_queries_use_buckets() -> None:
    for query in _queries():
        if "histogram_quantile" in query:
            assert "_bucket{" in query, query
