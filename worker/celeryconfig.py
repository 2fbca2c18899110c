"""Validated settings to the Celery configuration dict (the only place Celery settings are made)."""

from __future__ import annotations

from typing import Any

from config import Settings
from worker.redis_tls import RedisEndpoint, redis_endpoint
from worker.routing import DEFAULT_QUEUE, route_task


def redis_endpoints(settings: Settings) -> dict[str, RedisEndpoint]:
    return {
        "broker": redis_endpoint(settings.broker_url, settings, "BROKER_URL"),
        "result backend": redis_endpoint(settings.celery_result_backend, settings, "CELERY_RESULT_BACKEND"),
    }


def build_celery_config(settings: Settings, endpoints: dict[str, RedisEndpoint] | None = None) -> dict[str, Any]:
    endpoints = endpoints or redis_endpoints(settings)
    broker, backend = endpoints["broker"], endpoints["result backend"]
    key_prefix = {"global_keyprefix": settings.redis_key_prefix} if settings.redis_key_prefix else {}
    config: dict[str, Any] = {
        "broker_url": broker.url,
        "result_backend": backend.url,
        # JSON only: pickle from the broker would be remote code execution.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        "result_expires": settings.result_expires,
        "result_compression": "gzip",
        "result_extended": True,
        "task_track_started": True,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_acks_late": settings.task_acks_late,
        "task_reject_on_worker_lost": settings.task_acks_late,
        "task_default_queue": DEFAULT_QUEUE,
        "task_routes": (route_task,),
        # Set explicitly: Celery warns at startup when these are left to their defaults.
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        # Unbounded: the health watchdog ends the worker after WORKER_BROKER_LOST_EXIT_AFTER instead (a count of
        # retries ended it after about 110 s whatever that setting said).
        "broker_connection_max_retries": None,
        "broker_channel_error_retry": True,
        # Off: cancelling writes to the result backend (the worker died when that Redis was down too), and is not
        # needed: a task running while the connection drops stays listed as held (worker/delivery), so it is not
        # redelivered while it runs, and a finished one is dropped, not redelivered (docs/reliability.md).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_soft_shutdown_timeout": float(settings.celery_worker_soft_shutdown_timeout),
        # Off: when idle Celery would otherwise sleep the whole soft-shutdown timeout before exiting.
        "worker_enable_soft_shutdown_on_idle": False,
        "worker_hijack_root_logger": True,
        # kombu reads only top-level keys here (a nested connection_pool_kwargs is ignored).
        "broker_transport_options": {
            "socket_timeout": settings.redis_socket_timeout,
            "socket_connect_timeout": settings.redis_socket_connect_timeout,
            "retry_on_timeout": settings.redis_retry_on_timeout,
            "socket_keepalive": settings.redis_socket_keepalive,
            "health_check_interval": settings.redis_health_check_interval,
            "max_connections": settings.redis_max_connections,
            "visibility_timeout": settings.broker_visibility_timeout,
            **key_prefix,
        },
        # The Redis result backend takes its connection settings from these, not from transport options.
        "redis_socket_timeout": settings.redis_socket_timeout,
        "redis_socket_connect_timeout": settings.redis_socket_connect_timeout,
        "redis_retry_on_timeout": settings.redis_retry_on_timeout,
        "redis_socket_keepalive": settings.redis_socket_keepalive,
        "redis_backend_health_check_interval": settings.redis_health_check_interval,
        "redis_max_connections": settings.redis_max_connections,
        "result_backend_transport_options": {**key_prefix, "visibility_timeout": settings.broker_visibility_timeout},
        # Wait for the result backend instead of failing: with task_track_started, a task starting while the backend
        # is away fails on its STARTED state before its body runs, and Celery then acknowledges it (or stores its
        # FAILURE, which the delivery recovery takes for "already ran"): the task is lost (docs/reliability.md,
        # "Delivery"). Retries are unbounded (a worker that lost the broker too is ended by the health watchdog) and
        # at most 1 s apart, so that tasks resume within about a second of the backend's return.
        "result_backend_always_retry": True,
        "result_backend_max_sleep_between_retries_ms": 1000,
    }
    if broker.ssl_options is not None:
        config["broker_use_ssl"] = dict(broker.ssl_options)
    if backend.ssl_options is not None:
        config["redis_backend_use_ssl"] = dict(backend.ssl_options)
    return config
