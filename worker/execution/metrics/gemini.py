"""Gemini judge over its REST API: ``POST {base}/v1beta/models/{model}:generateContent``.

The key goes in the ``x-goog-api-key`` header, never in the ``?key=`` query, so it cannot end up in a logged URL.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp

from worker.execution.metrics.judge_prompt import JudgePrompt
from worker.execution.metrics.reply import JudgeReply, token_count
from worker.execution.metrics.transport import JudgeCallError, post_json
from worker.execution.spec import JudgeSettings, MetricSpec


def gemini_model(metric: MetricSpec, settings: JudgeSettings) -> str:
    model = metric.judge_model or settings.gemini_model
    return model.removeprefix("models/")


def response_schema(metric: MetricSpec) -> dict[str, Any]:
    """Constrains the reply to the verdict's shape; ``reason`` first so the model explains before it scores."""
    if metric.score_type == "categorical":
        verdict = {"type": "STRING", "enum": list(metric.categories)}
        key = "category"
    else:
        verdict = {"type": "NUMBER" if metric.score_type == "numeric" else "BOOLEAN"}
        key = "score"
    return {
        "type": "OBJECT",
        "properties": {"reason": {"type": "STRING"}, key: verdict},
        "required": ["reason", key],
        "propertyOrdering": ["reason", key],
    }


async def call_gemini(
    session: aiohttp.ClientSession, settings: JudgeSettings, metric: MetricSpec, prompt: JudgePrompt,
) -> JudgeReply:
    assert settings.gemini_api_key, "caller checks that Gemini is configured"
    model = gemini_model(metric, settings)
    url = f"{settings.gemini_base_url.rstrip('/')}/v1beta/models/{quote(model, safe='')}:generateContent"
    body = {
        "systemInstruction": {"parts": [{"text": prompt.system}]},
        "contents": [{"role": "user", "parts": [{"text": prompt.user}]}],
        "generationConfig": {
            "temperature": 0,
            "responseMimeType": "application/json",
            "responseSchema": response_schema(metric),
        },
    }
    data = await post_json(
        session, url, headers={"x-goog-api-key": settings.gemini_api_key}, body=body,
        timeout=settings.timeout_seconds, retry=settings.retry, label="gemini", secrets=[settings.gemini_api_key],
    )
    if not isinstance(data, dict):
        raise JudgeCallError("reply is not a JSON object")
    return JudgeReply(text=_text(data), model=str(data.get("modelVersion") or model), usage=_usage(data))


def _text(data: dict[str, Any]) -> str:
    candidates = data.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        feedback = data.get("promptFeedback")
        blocked = feedback.get("blockReason") if isinstance(feedback, dict) else None
        raise JudgeCallError(f"no candidates in the reply (prompt blocked: {blocked})" if blocked
                             else "no candidates in the reply")
    candidate = candidates[0] if isinstance(candidates[0], dict) else {}
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    # Thinking models may return their thoughts as parts flagged "thought"; the verdict is in the others.
    texts = [part["text"] for part in parts or []
             if isinstance(part, dict) and isinstance(part.get("text"), str) and not part.get("thought")]
    if not texts:
        raise JudgeCallError(f"no text in the reply (finishReason {candidate.get('finishReason')})")
    return "".join(texts)


def _usage(data: dict[str, Any]) -> dict[str, int] | None:
    usage = data.get("usageMetadata")
    if not isinstance(usage, dict):
        return None
    prompt = token_count(usage.get("promptTokenCount"))
    completion = token_count(usage.get("candidatesTokenCount"))
    total = token_count(usage.get("totalTokenCount")) or prompt + completion
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
