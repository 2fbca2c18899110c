"""Azure OpenAI judge over its REST API:
``POST {endpoint}/openai/deployments/{deployment}/chat/completions?api-version={version}`` with an ``api-key``
header. A metric's ``judge_model`` names the deployment; without it the configured deployment is used.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from worker.execution.metrics.judge_prompt import JudgePrompt
from worker.execution.metrics.reply import JudgeReply, token_count
from worker.execution.metrics.transport import JudgeCallError, post_json
from worker.execution.spec import JudgeSettings, MetricSpec


def azure_deployment(metric: MetricSpec, settings: JudgeSettings) -> str | None:
    return metric.judge_model or settings.azure_deployment


async def call_azure_openai(
    session: aiohttp.ClientSession, settings: JudgeSettings, metric: MetricSpec, prompt: JudgePrompt,
) -> JudgeReply:
    deployment = azure_deployment(metric, settings)
    assert settings.azure_endpoint and settings.azure_api_key and deployment, "caller checks the configuration"
    url = (f"{settings.azure_endpoint.rstrip('/')}/openai/deployments/{quote(deployment, safe='')}"
           f"/chat/completions?{urlencode({'api-version': settings.azure_api_version})}")
    body = {
        "messages": [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}],
        "temperature": 0,
        "response_format": {"type": "json_object"},
    }
    data = await post_json(
        session, url, headers={"api-key": settings.azure_api_key}, body=body, timeout=settings.timeout_seconds,
        retry=settings.retry, label="azure_openai", secrets=[settings.azure_api_key],
    )
    if not isinstance(data, dict):
        raise JudgeCallError("reply is not a JSON object")
    # The reply's "model" names the model version behind the deployment, which is what produced the verdict.
    return JudgeReply(text=_text(data), model=str(data.get("model") or deployment), usage=_usage(data))


def _text(data: dict[str, Any]) -> str:
    choices = data.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    if choice is None:
        raise JudgeCallError("no choices in the reply")
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content = message.get("content")
    if not isinstance(content, str) or not content.strip():
        if message.get("refusal"):
            raise JudgeCallError("the model refused to answer")
        raise JudgeCallError(f"no content in the reply (finish_reason {choice.get('finish_reason')})")
    return content


def _usage(data: dict[str, Any]) -> dict[str, int] | None:
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = token_count(usage.get("prompt_tokens"))
    completion = token_count(usage.get("completion_tokens"))
    total = token_count(usage.get("total_tokens")) or prompt + completion
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
