"""The workers' /metrics port, its headless Service, the ServiceMonitor (off by default) and its NetworkPolicy."""

from __future__ import annotations

from typing import Any

from chart_support import FULLNAME, VALUE_SETS, container

METRICS = f"{FULLNAME}-metrics"


def test_no_metrics_objects_by_default(render: Any) -> None:
    rendered = render({"networkPolicy": {"enabled": True}})
    assert not [o for o in rendered.all("Service") if o["metadata"]["name"] == METRICS]
    assert not rendered.all("ServiceMonitor")
    assert all("ports" not in container(w) for w in rendered.workers())
    policy = rendered.get("NetworkPolicy", FULLNAME)
    assert policy["spec"]["ingress"] == []


def test_metrics_port_service_and_service_monitor(render: Any) -> None:
    rendered = render({**VALUE_SETS["metrics"], "workers": [{"name": "default"}, {"name": "runs",
                                                                                 "queues": ["execution"]}]})
    assert rendered.get("ConfigMap", FULLNAME)["data"]["METRICS_PORT"] == "9808"
    workers = rendered.workers()
    assert len(workers) == 2
    for worker in workers:
        assert container(worker)["ports"] == [{"name": "metrics", "containerPort": 9808, "protocol": "TCP"}]
    service = rendered.get("Service", METRICS)
    assert service["spec"]["clusterIP"] == "None", "headless: every pod is scraped"
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9808, "targetPort": "metrics",
                                         "protocol": "TCP"}]
    selector = service["spec"]["selector"]
    for worker in workers:
        labels = worker["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in selector.items()), "the Service selects every worker pool"
    assert not any(all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())
                   for d in rendered.all("Deployment") if d not in workers), "and nothing else"
    monitor = rendered.get("ServiceMonitor", METRICS)
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    match = monitor["spec"]["selector"]["matchLabels"]
    assert all(service["metadata"]["labels"].get(k) == v for k, v in match.items())
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s",
                                             "scrapeTimeout": "10s"}]
    ingress = rendered.get("NetworkPolicy", FULLNAME)["spec"]["ingress"]
    assert ingress == [{"from": VALUE_SETS["metrics"]["networkPolicy"]["metricsFrom"],
                        "ports": [{"protocol": "TCP", "port": 9808}]}]


def test_metrics_service_without_service_monitor(render: Any) -> None:
    rendered = render({"config": {"metricsPort": 9808}})
    assert rendered.get("Service", METRICS)
    assert not rendered.all("ServiceMonitor")


def test_service_monitor_needs_a_metrics_port(render_error: Any) -> None:
    message = render_error({"metrics": {"serviceMonitor": {"enabled": True}}})
    assert "needs config.metricsPort" in message
