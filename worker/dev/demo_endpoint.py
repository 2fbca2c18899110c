"""A demo LLM application for `make run`: ``POST /chat`` with ``{"input": ...}`` answers ``{"output": ...}``.

Loopback only; the worker reaches it because `make run` sets EXECUTION_ALLOW_PRIVATE_TARGETS=yes.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

ANSWERS = (
    ("refund", "You can ask for a refund within 30 days; we refund to the original payment method."),
    ("password", "Use 'Forgot password' on the sign-in page; the link is valid for one hour."),
    ("shipping", "Standard shipping takes 3 to 5 working days."),
)


def answer(question: str) -> str:
    lowered = question.lower()
    for keyword, reply in ANSWERS:
        if keyword in lowered:
            return reply
    return f"I am a demo assistant. You asked: {question}"


def build_app(latency: float) -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "send JSON"}, status=400)
        await asyncio.sleep(latency)
        question = str(body.get("input", "")) if isinstance(body, dict) else ""
        return web.json_response({"output": answer(question)})

    app = web.Application(client_max_size=1 << 20)
    app.router.add_post("/chat", chat)
    return app


def serve(port: int, latency: float) -> int:
    print(f"demo endpoint on http://127.0.0.1:{port}/chat (Ctrl-C stops it)", flush=True)
    web.run_app(build_app(latency), host="127.0.0.1", port=port, print=None)
    return 0
