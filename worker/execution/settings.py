"""The execution's view of the validated settings (config/options.py), as one comparable value."""

from __future__ import annotations

from dataclasses import dataclass

from worker.execution.spec import JudgeSettings, RetryPolicy
from worker.settings import get_settings


@dataclass(frozen=True, slots=True)
class ExecutionSettings:
    allow_private_targets: bool
    run_cap: int
    lane_cap: int
    lease_seconds: int
    lane_seconds: int
    max_response_bytes: int
    max_output_chars: int
    stall_seconds: int
    sweep_interval: int
    retry: RetryPolicy
    judges: JudgeSettings


def execution_settings() -> ExecutionSettings:
    from worker.execution.load import judge_settings, retry_policy

    s = get_settings()
    return ExecutionSettings(
        allow_private_targets=s.execution_allow_private_targets, run_cap=s.execution_run_concurrency,
        lane_cap=s.execution_lane_concurrency, lease_seconds=s.execution_lease_seconds,
        lane_seconds=s.execution_lane_seconds, max_response_bytes=s.execution_max_response_bytes,
        max_output_chars=s.execution_max_output_chars, stall_seconds=s.execution_stall_seconds,
        sweep_interval=s.execution_sweep_interval, retry=retry_policy(s), judges=judge_settings(s),
    )
