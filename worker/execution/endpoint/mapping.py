"""Response mapping: the endpoint's answer -> output, context, metadata (JSONPath for JSON answers)."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from jsonpath_ng import JSONPath
from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError
from jsonpath_ng.ext import parse

from worker.execution.endpoint.errors import CallError
from worker.execution.spec import EndpointSpec

_NOTHING = object()


@lru_cache(maxsize=1024)
def compile_path(expression: str) -> JSONPath:
    """Parsing a JSONPath costs far more than applying it, and every test of an endpoint uses the same ones."""
    try:
        return parse(expression)
    except (JsonPathLexerError, JsonPathParserError, Exception) as exc:  # the ply parser raises plain Exception
        raise CallError("invalid_endpoint", f"response mapping {expression!r} is not a JSONPath: "
                        f"{' '.join(str(exc).split())[:200]}") from None


def _select(document: Any, expression: str) -> Any:
    matches = [match.value for match in compile_path(expression).find(document)]
    if not matches:
        return _NOTHING
    return matches[0] if len(matches) == 1 else matches


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def map_response(endpoint: EndpointSpec, text: str, max_output_chars: int) -> tuple[str, Any, Any]:
    """(output, context, metadata). Text answers are the output as they are (mappings do not apply); a JSON
    answer without an ``output`` mapping is the whole body. Output longer than ``max_output_chars`` is cut."""
    if endpoint.response_format == "text":
        return text[:max_output_chars], None, None
    try:
        document = json.loads(text)
    except ValueError:
        raise CallError("response_mapping", "the endpoint's answer is not JSON") from None
    mapping = endpoint.response_mapping
    if "output" in mapping:
        output = _select(document, mapping["output"])
        if output is _NOTHING:
            raise CallError("response_mapping", f"output path {mapping['output']!r} matches nothing in the answer")
    else:
        output = document
    extra = []
    for name in ("context", "metadata"):
        value = _select(document, mapping[name]) if name in mapping else _NOTHING
        extra.append(None if value is _NOTHING else value)
    return _as_text(output)[:max_output_chars], extra[0], extra[1]
