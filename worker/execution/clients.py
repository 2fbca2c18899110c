"""The endpoint client and the evaluator of this process's execution loop, made once and shared by its lanes.

Both hold an aiohttp session (bound to the loop that made it): sharing them keeps connections to a user's endpoint
and a judge open across lane tasks, and OAuth2 tokens cached until they expire.
"""

from __future__ import annotations

import asyncio

from worker.execution.endpoint import EndpointClient
from worker.execution.metrics import Evaluator
from worker.execution.settings import ExecutionSettings

_shared: dict[int, tuple[ExecutionSettings, EndpointClient, Evaluator]] = {}


async def clients(settings: ExecutionSettings) -> tuple[EndpointClient, Evaluator]:
    """This loop's client and evaluator for ``settings`` (made anew when the settings differ)."""
    key = id(asyncio.get_running_loop())
    held = _shared.get(key)
    if held is not None and held[0] == settings:
        return held[1], held[2]
    if held is not None:
        await held[1].aclose()
        await held[2].aclose()
    client = EndpointClient(allow_private_targets=settings.allow_private_targets,
                            max_response_bytes=settings.max_response_bytes, retry=settings.retry,
                            max_output_chars=settings.max_output_chars)
    evaluator = Evaluator(settings.judges)
    _shared[key] = (settings, client, evaluator)
    return client, evaluator
