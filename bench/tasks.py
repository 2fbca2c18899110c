"""No-op tasks: the baseline is a plain Celery task, the candidate goes through BaseTask and the tenant path."""

from celery import Task, shared_task

from worker.base_task import BaseTask


@shared_task(bind=True, base=Task, name="bench.noop_plain")
def noop_plain(self: Task) -> None:
    return None


@shared_task(bind=True, base=BaseTask, name="bench.noop_tenant")
def noop_tenant(self: BaseTask) -> None:
    return None


@shared_task(bind=True, base=Task, name="bench.call_endpoint")
def call_endpoint(self: Task, url: str, test_id: str) -> int:
    """The baseline of the execution benchmark: one Celery task per test, one blocking HTTP call each."""
    import json
    import urllib.request

    body = json.dumps({"input": f"question {test_id}", "test_id": test_id}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback benchmark server
        response.read()
        return response.status
