"""Loopback servers that speak the Gemini and Azure OpenAI wire formats, for the judge tests.

Each runs aiohttp.web on 127.0.0.1 in a background thread with its own event loop, so a test can drive the
client with ``asyncio.run`` in the test's thread. The servers check the auth header against the expected key
(401 otherwise), record every request (path, query, headers, JSON body), and can be told to fail the first N
calls with a status (and Retry-After), answer slowly, or reply with any text.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class CapturedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    body: Any


class JudgeServer:
    """Common machinery; subclasses say which path and header they answer and how a reply looks."""

    path_pattern: re.Pattern[str]
    auth_header: str

    def __init__(self, key: str) -> None:
        self.key = key
        #: The model's reply text; set ``verdict`` instead for a JSON object.
        self.reply_text = json.dumps({"reason": "looks right", "score": True})
        self.usage = (120, 30)
        self.model_name = "judge-model-1"
        self.fail_first = 0
        self.fail_status = 500
        self.retry_after: str | None = None
        #: Put into the error message of failures; lets a test make the server echo something back.
        self.error_message = "simulated failure"
        self.delay = 0.0
        self.requests: list[CapturedRequest] = []
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""

    @property
    def verdict(self) -> Any:
        return json.loads(self.reply_text)

    @verdict.setter
    def verdict(self, value: Any) -> None:
        self.reply_text = json.dumps(value)

    def start(self) -> JudgeServer:
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> JudgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return self._runner.addresses[0][1]

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self.requests.append(CapturedRequest(
            method=request.method, path=request.path, query=dict(request.query),
            headers={name.lower(): value for name, value in request.headers.items()}, body=body))
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.method != "POST" or not self.path_pattern.fullmatch(request.path):
            return self._error(404, "no such route")
        if request.headers.get(self.auth_header) != self.key:
            return self._error(401, "API key not valid")
        if self.fail_first > 0:
            self.fail_first -= 1
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            return self._error(self.fail_status, self.error_message, headers)
        return web.json_response(self.reply(body))

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response({"error": {"code": status, "message": message}}, status=status, headers=headers)

    def reply(self, body: Any) -> dict[str, Any]:
        raise NotImplementedError


class GeminiServer(JudgeServer):
    path_pattern = re.compile(r"/v1beta/models/[^/:]+:generateContent")
    auth_header = "x-goog-api-key"

    def reply(self, body: Any) -> dict[str, Any]:
        prompt, completion = self.usage
        return {
            "candidates": [{"content": {"role": "model", "parts": [{"text": self.reply_text}]},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": completion,
                              "totalTokenCount": prompt + completion},
            "modelVersion": self.model_name,
        }


class AzureOpenAIServer(JudgeServer):
    path_pattern = re.compile(r"/openai/deployments/[^/]+/chat/completions")
    auth_header = "api-key"

    def reply(self, body: Any) -> dict[str, Any]:
        prompt, completion = self.usage
        return {
            "id": "chatcmpl-test", "object": "chat.completion", "model": self.model_name,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": self.reply_text}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        }
