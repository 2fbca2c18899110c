"""A stand-in LLM application for execution tests: a real aiohttp server on 127.0.0.1 in its own thread.

Routes:
  POST /chat            {"input", "test_id"} -> {"output": "echo: <input>", "meta": {...}}; configure() sets
                        latency, failures (first n calls per test key), status and a fixed answer; between
                        hold() and release() calls are counted, then wait
  GET  /text            text/plain answer
  GET  /huge?bytes=N    N bytes of JSON-ish filler, streamed without Content-Length (&length=1 to send it)
  ANY  /redirect?to=URL&status=302   a redirect to URL (any address)
  POST /token           OAuth2 client-credentials token endpoint (checks client_id/secret, counts requests)
  POST /protected       like /chat but needs a Bearer token issued by /token and not revoked
  POST /unauthorized-once  401 on the first call per test key, then like /chat
  ANY  /headers         answers {"output": "ok", "headers": {...}} with the request's headers
Every request's headers and body are kept in ``requests`` (path, headers, body).
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import json
import threading
import time
from typing import Any

from aiohttp import web


class EndpointServer:
    def __init__(self, *, client_id: str = "client-1", client_secret: str = "s3cret-client-value",  # noqa: S107 - test server
                 token_lifetime: int = 3600) -> None:
        self.url = ""
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.calls: collections.Counter[str] = collections.Counter()
        self.token_requests = 0
        self.token_forms: list[dict[str, str]] = []
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.in_flight = 0
        self.in_flight_max = 0
        #: time.monotonic() of the first /chat call since start or reset().
        self.first_call_at: float | None = None
        self._valid_tokens: set[str] = set()
        self._failures: collections.Counter[str] = collections.Counter()
        self._unauthorized: set[str] = set()
        # Set: calls go through; cleared by hold(). A threading.Event, waited for off the loop, since the test's
        # thread flips it.
        self._held = threading.Event()
        self._held.set()
        self.configure()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def configure(self, *, latency: float = 0.0, fail_first: int = 0, fail_status: int = 503,
                  retry_after: str | None = None, status: int = 200, answer: str | None = None) -> None:
        self.latency = latency
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.retry_after = retry_after
        self.status = status
        self.answer = answer

    def reset(self) -> None:
        """Forget calls and failures counted so far (between runs of a benchmark)."""
        self.calls.clear()
        self.requests.clear()
        self._failures.clear()
        self.in_flight_max = 0
        self.first_call_at = None

    def hold(self) -> None:
        """From now on /chat calls wait (after being counted) until :meth:`release`."""
        self._held.clear()

    def release(self) -> None:
        self._held.set()

    def total_calls(self) -> int:
        return sum(self.calls.values())

    def revoke_tokens(self) -> None:
        """Every token issued so far is refused from now on (the endpoint answers 401)."""
        self._valid_tokens.clear()

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> EndpointServer:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="endpoint-server", daemon=True)
        self._thread.start()
        if not ready.wait(10) or not self.url:
            raise RuntimeError("endpoint server did not start")
        return self

    def stop(self) -> None:
        self._held.set()  # held calls wait in executor threads, which the interpreter joins at exit
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> EndpointServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/chat", self._chat)
        app.router.add_get("/text", self._text)
        app.router.add_get("/huge", self._huge)
        app.router.add_route("*", "/redirect", self._redirect)
        app.router.add_post("/token", self._token)
        app.router.add_post("/protected", self._protected)
        app.router.add_post("/unauthorized-once", self._unauthorized_once)
        app.router.add_route("*", "/headers", self._headers)
        # A client that gives up (a cancelled run) cancels its handler, so in_flight shows calls really open.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
        loop.run_until_complete(site.start())
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

    # -- handlers ----------------------------------------------------------------------------------------

    def _retry_after(self) -> str:
        """``"date:N"`` sends the HTTP-date N seconds from now; anything else is sent as it is."""
        if self.retry_after is not None and self.retry_after.startswith("date:"):
            when = time.time() + float(self.retry_after.removeprefix("date:"))
            return email.utils.formatdate(when, usegmt=True)
        return str(self.retry_after)

    async def _record(self, request: web.Request) -> tuple[bytes, dict[str, Any]]:
        body = await request.read()
        self.requests.append((request.path, dict(request.headers), body))
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            payload = {}
        return body, payload if isinstance(payload, dict) else {}

    async def _chat(self, request: web.Request) -> web.Response:
        _body, payload = await self._record(request)
        return await self._answer(payload)

    async def _answer(self, payload: dict[str, Any]) -> web.Response:
        key = str(payload.get("test_id") or payload.get("input"))
        if self.first_call_at is None:
            self.first_call_at = time.monotonic()
        self.calls[key] += 1
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)
        try:
            if not self._held.is_set():
                await asyncio.get_running_loop().run_in_executor(None, self._held.wait)
            if self.latency:
                await asyncio.sleep(self.latency)
        finally:
            self.in_flight -= 1
        if self._failures[key] < self.fail_first:
            self._failures[key] += 1
            headers = {"Retry-After": self._retry_after()} if self.retry_after is not None else {}
            return web.json_response({"error": "try later"}, status=self.fail_status, headers=headers)
        output = self.answer if self.answer is not None else f"echo: {payload.get('input')}"
        meta = {"test_id": payload.get("test_id"), "call": self.calls[key]}
        return web.json_response({"output": output, "meta": meta}, status=self.status)

    async def _text(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(text="plain answer", content_type="text/plain")

    async def _huge(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        size = int(request.query.get("bytes", "2000000"))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if request.query.get("length"):
            response.content_length = size
        await response.prepare(request)
        chunk = b"x" * 65_536
        sent = 0
        while sent < size:
            piece = chunk[: size - sent]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def _redirect(self, request: web.Request) -> web.Response:
        await self._record(request)
        status = int(request.query.get("status", "302"))
        return web.Response(status=status, headers={"Location": request.query["to"]})

    async def _token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.token_requests += 1
        self.token_forms.append({k: str(v) for k, v in form.items()})
        if form.get("grant_type") != "client_credentials" or form.get("client_id") != self.client_id or \
                form.get("client_secret") != self.client_secret:
            return web.json_response({"error": "invalid_client"}, status=401)
        token = f"token-{self.token_requests}"
        self._valid_tokens.add(token)
        return web.json_response({"access_token": token, "token_type": "Bearer", "expires_in": self.token_lifetime})

    async def _protected(self, request: web.Request) -> web.Response:
        _body, payload = await self._record(request)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self._valid_tokens:
            return web.json_response({"error": "invalid_token"}, status=401)
        return await self._answer(payload)

    async def _unauthorized_once(self, request: web.Request) -> web.Response:
        _body, payload = await self._record(request)
        key = str(payload.get("test_id") or payload.get("input"))
        if key not in self._unauthorized:
            self._unauthorized.add(key)
            return web.json_response({"error": "unauthorized"}, status=401)
        return await self._answer(payload)

    async def _headers(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"output": "ok", "headers": dict(request.headers), "method": request.method,
                                  "query": dict(request.query)})
