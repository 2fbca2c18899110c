"""GENERATED from config/options.py by `python -m config.codegen`; do not edit by hand.

One typed, read-only field per environment variable (the variable name in lower case), so that a misspelt
setting raises AttributeError at once and type checkers see every field. tests/test_config.py fails while this
file is stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from config.settings_base import SettingsBase

__all__ = ["Settings"]


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class Settings(SettingsBase):
    """Validated settings; build them with config.load_settings, reach them with worker.settings.get_settings."""

    broker_url: str
    celery_result_backend: str
    database_url: str
    migration_database_url: str | None
    database_pool_size: int
    database_max_overflow: int
    database_pool_timeout: int
    redis_socket_timeout: int
    redis_socket_connect_timeout: int
    redis_retry_on_timeout: bool
    redis_socket_keepalive: bool
    redis_health_check_interval: int
    redis_max_connections: int
    redis_key_prefix: str
    broker_visibility_timeout: int
    redis_ssl_cert_reqs: Literal["required", "optional", "none"] | None
    redis_ssl_ca_certs: str | None
    redis_ssl_certfile: str | None
    redis_ssl_keyfile: str | None
    task_time_limit: int
    task_soft_time_limit: int
    task_max_countdown: int
    task_max_retries: int
    task_retry_backoff_max: int
    task_acks_late: bool
    result_expires: int
    tenant_signing_key: tuple[str, ...]
    db_encryption_key: tuple[str, ...]
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    log_format: Literal["text", "json"]
    celery_worker_concurrency: int
    celery_worker_prefetch_multiplier: int
    celery_worker_max_tasks_per_child: int
    celery_worker_max_memory_per_child: int | str
    celery_worker_loglevel: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    celery_worker_queues: tuple[str, ...]
    celery_worker_pool: Literal["prefork", "threads", "gevent", "solo"]
    celery_worker_hostname: str
    celery_worker_mingle: bool
    celery_worker_soft_shutdown_timeout: int
    celery_worker_opts: str
    worker_health_dir: str
    worker_heartbeat_interval: int
    worker_heartbeat_max_age: int
    worker_broker_lost_exit_after: int
    metrics_port: int
    metrics_organizations: str
    enable_flower: bool
    flower_port: int
    execution_allow_private_targets: bool
    execution_run_concurrency: int
    execution_lane_concurrency: int
    execution_lease_seconds: int
    execution_lane_seconds: int
    execution_max_attempts: int
    execution_retry_after_cap: int
    execution_max_response_bytes: int
    execution_max_output_chars: int
    execution_sweep_interval: int
    execution_stall_seconds: int
    gemini_api_key: str
    gemini_model_name: str
    gemini_base_url: str
    azure_openai_endpoint: str | None
    azure_openai_api_key: str
    azure_openai_deployment_name: str
    azure_openai_api_version: str
    judge_allowed_models: tuple[str, ...]
    judge_timeout_seconds: int
    flower_basic_auth: str
    flower_unauthenticated: bool
    api_token_secret: tuple[str, ...]
    api_host: str
    api_port: int
