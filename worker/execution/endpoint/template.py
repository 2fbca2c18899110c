"""Sandboxed rendering of an endpoint's request: JSON body mapping, text body template, header values, query.

Templates come from users, so they run in Jinja's ImmutableSandboxedEnvironment (no attribute access to Python
internals, no mutation of passed values). The sandbox stops escapes but not work: a template could still ask
for gigabytes or hours. So request templates are a data-shaping language, not a program:

* no macros, call blocks or recursive loops, and no loop inside another loop (a loop runs at most over one
  iterable, and ``range`` is capped at 100,000 items by the sandbox);
* ``namespace`` (state that survives loop iterations) and ``lipsum`` are not available;
* ``*``, ``**`` and ``%`` refuse results larger than the rendered-size cap, and no filter or method call may be
  given an integer above 100,000 (``center(10**9)``, ``ljust``, ``indent``...);
* the filters and str methods that can multiply their input (``replace``, ``join``, ``indent``, ``wordwrap``,
  ``center``, ``format``, ``urlize``, ``expandtabs``) are refused when their projected output is over the
  cap, before they run (template_limits);
* output is streamed and refused past MAX_RENDERED_CHARS.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache, wraps
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from worker.execution.endpoint.errors import CallError
from worker.execution.endpoint.template_limits import (
    check_filter,
    check_str_method,
    format_size,
    printf_size,
    refuse_over,
)
from worker.execution.spec import EndpointSpec

MAX_RENDERED_CHARS = 1_000_000
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_INT_ARGUMENT = 100_000
_BODYLESS_METHODS = frozenset({"GET", "DELETE"})
_EXACT_VARIABLE = re.compile(r"^\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}$")
# A printf-style or str.format width/precision of six digits or more asks for a megabyte of padding.
_HUGE_FORMAT_WIDTH = re.compile(r"[%:][^%{}]*?\d{6,}")


def _check_arguments(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT_ARGUMENT:
            raise SecurityError(f"integer argument {value} is above {MAX_INT_ARGUMENT}")
        if isinstance(value, str) and _HUGE_FORMAT_WIDTH.search(value):
            raise SecurityError("format width too large")


def _sized(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple) else 0


class _RequestSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            count = right if isinstance(right, int) else left if isinstance(left, int) else None
            if count is not None and max(_sized(left), _sized(right)) * count > MAX_RENDERED_CHARS:
                raise SecurityError("repetition result too large")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and (
                    right > 64 or abs(left).bit_length() * max(right, 0) > 256):
                raise SecurityError("power result too large")
        elif isinstance(left, str) and _HUGE_FORMAT_WIDTH.search(left):
            raise SecurityError("format width too large")
        elif operator == "%" and isinstance(left, str):
            values = right if isinstance(right, tuple) else (right,)
            _check_arguments(values, {})
            refuse_over(printf_size(left, values, {}, MAX_INT_ARGUMENT), MAX_RENDERED_CHARS, "%")
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # Checked where Jinja wraps str.format: the wrapper hides the format string from call().
        receiver = getattr(value, "__self__", None)
        if isinstance(receiver, str) and _HUGE_FORMAT_WIDTH.search(receiver):
            raise SecurityError("format width too large")
        wrapped = super().wrap_str_format(value)
        if wrapped is None or not isinstance(receiver, str):
            return wrapped

        def sized(*args: Any, **kwargs: Any) -> str:
            mapping = args[0] if getattr(value, "__name__", "") == "format_map" and args else kwargs
            positional = () if mapping is not kwargs else args
            refuse_over(format_size(receiver, positional, mapping, MAX_INT_ARGUMENT), MAX_RENDERED_CHARS, "format")
            return wrapped(*args, **kwargs)

        return sized

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_arguments(args, kwargs)
        receiver = getattr(__obj, "__self__", None)
        if isinstance(receiver, str):
            args = check_str_method(receiver, getattr(__obj, "__name__", ""), args, kwargs, MAX_RENDERED_CHARS)
        return super().call(__context, __obj, *args, **kwargs)


def _guarded_filter(function: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_arguments(args[1:], kwargs)
        args, kwargs = check_filter(function, args, kwargs, MAX_RENDERED_CHARS, MAX_INT_ARGUMENT)
        return function(*args, **kwargs)

    return guarded


def _make_environment() -> _RequestSandbox:
    env = _RequestSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    for name in ("namespace", "lipsum"):
        env.globals.pop(name, None)
    env.filters = {name: _guarded_filter(function) for name, function in env.filters.items()}
    return env


_ENV = _make_environment()


def _check_shape(tree: nodes.Template) -> None:
    for node in tree.find_all((nodes.Macro, nodes.CallBlock)):
        raise SecurityError(f"'{type(node).__name__.lower()}' is not allowed in request templates")
    for loop in tree.find_all(nodes.For):
        if loop.recursive:
            raise SecurityError("recursive loops are not allowed in request templates")
        inner = [*loop.body, *loop.else_]
        if any(True for child in inner for _ in child.find_all(nodes.For)) or any(
                isinstance(child, nodes.For) for child in inner):
            raise SecurityError("a loop inside a loop is not allowed in request templates")


@lru_cache(maxsize=1024)
def compile_template(source: str) -> Template:
    """Parsing is the slow part of rendering and the same endpoint renders the same strings for every test."""
    _check_shape(_ENV.parse(source))
    return _ENV.from_string(source)


def _describe(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"


def render_text(source: str, variables: Mapping[str, Any]) -> str:
    """Render one template; raises CallError('request_template') for syntax, undefined names, refused access
    and oversize output."""
    if "{" not in source and "\r" not in source:
        # Nothing for Jinja to do (no tag, no newline to normalise): the text is its own rendering. Most keys
        # and many values of a request mapping are such text, and a render costs a Jinja context per call.
        return source
    try:
        template = compile_template(source)
        parts: list[str] = []
        size = 0
        stream: Iterator[str] = template.generate(variables)
        for part in stream:
            size += len(part)
            if size > MAX_RENDERED_CHARS:
                raise SecurityError(f"rendered text exceeds {MAX_RENDERED_CHARS} characters")
            parts.append(part)
        return "".join(parts)
    except (TemplateError, ArithmeticError, TypeError, ValueError, RecursionError, LookupError,
            MemoryError) as exc:
        # TemplateError covers SecurityError and UndefinedError; the others come from user expressions
        # (1/0, int('x'), range too big) or a size no projection foresaw (MemoryError, RecursionError).
        raise CallError("request_template", f"request template: {_describe(exc)}") from None


def _render_value(value: Any, variables: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        exact = _EXACT_VARIABLE.match(value)
        if exact:
            name = exact.group(1)
            if name not in variables:
                raise CallError("request_template", f"request template: '{name}' is undefined")
            return variables[name]
        return render_text(value, variables)
    if isinstance(value, Mapping):
        return {render_text(str(key), variables): _render_value(item, variables) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_render_value(item, variables) for item in value]
    return value


def _has_header(headers: Mapping[str, str], name: str) -> bool:
    return any(key.lower() == name.lower() for key in headers)


def render_request_body(endpoint: EndpointSpec, variables: Mapping[str, Any]) -> tuple[bytes | None, str | None]:
    """The body and its Content-Type. GET and DELETE send no body. ``request_body_template`` (text) wins over
    ``request_mapping`` (JSON) when both are set."""
    if endpoint.method.upper() in _BODYLESS_METHODS:
        return None, None
    if endpoint.request_body_template is not None:
        body = render_text(endpoint.request_body_template, variables).encode()
        content_type = None if _has_header(endpoint.headers, "content-type") else "text/plain; charset=utf-8"
    elif endpoint.request_mapping is not None:
        try:
            body = json.dumps(_render_value(endpoint.request_mapping, variables), ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            raise CallError("request_template", f"request mapping is not JSON: {_describe(exc)}") from None
        content_type = "application/json"
    else:
        return None, None
    if len(body) > MAX_BODY_BYTES:
        raise CallError("request_template", f"request body exceeds {MAX_BODY_BYTES} bytes")
    return body, content_type


def render_headers(endpoint: EndpointSpec, variables: Mapping[str, Any]) -> dict[str, str]:
    headers = {}
    for name, value in endpoint.headers.items():
        rendered = render_text(value, variables)
        if "\r" in rendered or "\n" in rendered:
            raise CallError("request_template", f"header {name!r} renders to a value with a line break")
        headers[name] = rendered
    return headers


def render_query(endpoint: EndpointSpec, variables: Mapping[str, Any]) -> dict[str, str]:
    return {name: render_text(value, variables) for name, value in endpoint.query_params.items()}


def test_variables(prompt: str, *, expected_response: str | None = None, test_id: str | None = None,
                   context: Any = None, **extra: Any) -> dict[str, Any]:
    """The variables a test offers its endpoint's templates: ``input`` and ``prompt`` are both the prompt."""
    return {**extra, "input": prompt, "prompt": prompt, "expected_response": expected_response,
            "test_id": test_id, "context": context}


test_variables.__test__ = False  # type: ignore[attr-defined]  # pytest would collect it by name
