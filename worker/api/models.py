"""Response models of the API; they are its OpenAPI schema."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RunStatus = Literal["queued", "running", "completed", "partial", "failed", "cancelled"]
ResultStatus = Literal["pass", "fail", "error", "not_scored", "cancelled"]
TaskStatus = Literal["PENDING", "RECEIVED", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED", "REJECTED",
                     "IGNORED"]


class Launched(BaseModel):
    task_id: str = Field(description="Celery task id of the execute message; follow it at GET /tasks/{task_id}.")
    test_run_id: uuid.UUID = Field(description="The run, created before the task was enqueued; follow it at "
                                               "GET /test_runs/{id} or /test_runs/{id}/events.")


class TaskState(BaseModel):
    task_id: str
    status: TaskStatus = Field(description="Celery's state. PENDING also when the task has not started yet or its "
                                           "result expired (RESULT_EXPIRES).")
    result: Any = Field(None, description="What the task returned, once status is SUCCESS; else null.")
    error: str | None = Field(None, description="Exception type and a safe message when the task failed, was "
                                                "retried or revoked; never a traceback or a secret.")


class ResultCounts(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    passed: int = Field(0, alias="pass", serialization_alias="pass")
    fail: int = 0
    error: int = 0
    not_scored: int = 0
    cancelled: int = 0


class Run(BaseModel):
    id: uuid.UUID
    test_configuration_id: uuid.UUID
    status: RunStatus
    task_id: str | None = Field(description="The execute task that runs it.")
    total_tests: int = Field(description="Tests in the run (0 until its execute task has started it).")
    done: int = Field(description="Tests with a stored result.")
    progress: float = Field(ge=0, le=1, description="done / total_tests; 1 once the run has ended.")
    counts: ResultCounts = Field(description="Stored results by status.")
    cancel_requested: bool
    error: str | None = Field(description="Why the run failed, when it did.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None = Field(description="From start to end (or to now while it runs).")


class RunResult(BaseModel):
    id: uuid.UUID
    test_id: uuid.UUID
    prompt: str | None
    status: ResultStatus
    output: str | None
    score: float | None
    reason: str | None
    error_type: str | None
    http_status: int | None
    latency_ms: float | None
    attempts: int
    metrics: list[dict[str, Any]]
    details: dict[str, Any]
    created_at: datetime


class ResultPage(BaseModel):
    items: list[RunResult]
    total: int = Field(description="Results matching the filter.")
    limit: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page; null on the last one.")
