"""A remote-control command that reports the live Redis pool settings from inside a running worker."""

from __future__ import annotations

from typing import Any

from celery.worker.control import inspect_command


def describe_pool(pool: Any) -> dict[str, Any]:
    kwargs = pool.connection_kwargs
    return {
        "max_connections": pool.max_connections,
        "socket_timeout": kwargs.get("socket_timeout"),
        "socket_connect_timeout": kwargs.get("socket_connect_timeout"),
        "socket_keepalive": kwargs.get("socket_keepalive"),
        "retry_on_timeout": kwargs.get("retry_on_timeout"),
        "health_check_interval": kwargs.get("health_check_interval"),
        "connection_class": pool.connection_class.__name__,
        "ssl_cert_reqs": str(kwargs.get("ssl_cert_reqs")),
    }


def broker_pool(connection: Any) -> Any:
    return connection.default_channel.client.connection_pool


@inspect_command()
def redis_pools(state: Any) -> dict[str, Any]:
    consumer = state.consumer
    channel = consumer.connection.default_channel
    return {
        "broker": describe_pool(channel.client.connection_pool),
        "visibility_timeout": channel.visibility_timeout,
        "global_keyprefix": channel.global_keyprefix,
        "backend": describe_pool(consumer.app.backend.client.connection_pool),
    }


@inspect_command()
def gc_frozen(state: Any) -> dict[str, int]:
    """How many objects the worker's main process keeps out of its collector (worker/prefork.py), and whether
    that collector still frees a reference cycle made now."""
    import gc
    import weakref

    class Node:
        pass

    cycle = Node()
    cycle.self = cycle  # type: ignore[attr-defined]
    alive = weakref.ref(cycle)
    del cycle
    gc.collect()
    return {"frozen": gc.get_freeze_count(), "new_cycle_collected": alive() is None}
