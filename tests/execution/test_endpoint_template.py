"""Request rendering: JSON bodies that prompts cannot break, and a sandbox that refuses escapes and runaway work."""

from __future__ import annotations

import json
import time

import pytest

from worker.execution.endpoint.errors import CallError
from worker.execution.endpoint.template import (
    MAX_RENDERED_CHARS,
    render_headers,
    render_query,
    render_request_body,
    render_text,
    test_variables,
)
from worker.execution.spec import EndpointSpec

NASTY_PROMPT = 'He said "stop"\n}, "admin": true, {"x": "\\u0000 \u2028 {{ 7*7 }}'


def spec(**fields: object) -> EndpointSpec:
    return EndpointSpec(id="e1", url="http://127.0.0.1:1/chat", **fields)  # type: ignore[arg-type]


def test_exact_variable_keeps_its_json_type_and_cannot_break_the_json() -> None:
    endpoint = spec(request_mapping={
        "input": "{{ input }}", "also": "{{input}}", "ctx": "{{ context }}", "n": 3, "flag": True,
        "nested": [{"q": "Q: {{ prompt }}"}], "{{ test_id }}": None})
    variables = test_variables(NASTY_PROMPT, test_id="t-9", context={"docs": ["a", "b"], "k": 1})
    body, content_type = render_request_body(endpoint, variables)
    assert content_type == "application/json"
    document = json.loads(body)  # type: ignore[arg-type]
    assert document == {
        "input": NASTY_PROMPT, "also": NASTY_PROMPT, "ctx": {"docs": ["a", "b"], "k": 1}, "n": 3, "flag": True,
        "nested": [{"q": "Q: " + NASTY_PROMPT}], "t-9": None}
    assert "admin" not in document
    # The prompt's own "{{ 7*7 }}" is data, never rendered as a template.
    assert "49" not in body.decode()  # type: ignore[union-attr]


def test_text_body_template_is_sent_as_text_unless_a_content_type_is_configured() -> None:
    body, content_type = render_request_body(spec(request_body_template="<q>{{ input }}</q>"),
                                             test_variables("hi"))
    assert (body, content_type) == (b"<q>hi</q>", "text/plain; charset=utf-8")
    _, content_type = render_request_body(
        spec(request_body_template="{{ input }}", headers={"content-type": "application/xml"}), test_variables("x"))
    assert content_type is None


def test_get_and_delete_send_no_body() -> None:
    for method in ("GET", "DELETE"):
        assert render_request_body(spec(method=method, request_mapping={"a": "{{ input }}"}),
                                   test_variables("x")) == (None, None)


def test_headers_and_query_params_are_templates() -> None:
    endpoint = spec(headers={"X-Test": "t={{ test_id }}"}, query_params={"q": "{{ input|upper }}"})
    variables = test_variables("hello", test_id="7")
    assert render_headers(endpoint, variables) == {"X-Test": "t=7"}
    assert render_query(endpoint, variables) == {"q": "HELLO"}


def test_a_header_value_with_a_line_break_is_refused() -> None:
    with pytest.raises(CallError) as error:
        render_headers(spec(headers={"X-Input": "{{ input }}"}), test_variables("a\r\nX-Evil: 1"))
    assert error.value.error_type == "request_template"


@pytest.mark.parametrize("source", [
    "{{ undefined_name }}",
    "{{ input.nope.deeper }}",
    "{% if %}",
])
def test_undefined_names_and_syntax_errors_are_request_template_errors(source: str) -> None:
    with pytest.raises(CallError) as error:
        render_text(source, test_variables("x"))
    assert error.value.error_type == "request_template"


def test_exact_variable_that_is_missing_is_a_request_template_error() -> None:
    with pytest.raises(CallError) as error:
        render_request_body(spec(request_mapping={"a": "{{ missing }}"}), test_variables("x"))
    assert error.value.error_type == "request_template"
    assert "missing" in error.value.message


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__.os }}",
    "{{ input.__class__.__base__ }}",
    "{{ (1).__class__.__subclasses__() }}",
    "{{ range.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ ''.format.__globals__ }}",
    "{{ '{0.__class__}'.format(input) }}",
    "{{ context.update({'a': 1}) }}",
])
def test_sandbox_escapes_are_refused(source: str) -> None:
    with pytest.raises(CallError) as error:
        render_text(source, test_variables("x", context={}))
    assert error.value.error_type == "request_template"
    assert "SecurityError" in error.value.message or "Undefined" in error.value.message


@pytest.mark.parametrize(("source", "refusal"), [
    ("{% for i in range(10**9) %}x{% endfor %}", "integer argument"),
    ("{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}", "rendered text exceeds"),
    ("{% for i in range(3) %}{% for j in range(3) %}{% endfor %}{% endfor %}", "loop inside a loop"),
    ("{% for i in range(3) %}{% if i %}{% for j in range(3) %}{% endfor %}{% endif %}{% endfor %}",
     "loop inside a loop"),
    ("{% for i in range(3) recursive %}{% endfor %}", "recursive loops"),
    ("{% macro m(n) %}{{ m(n) }}{{ m(n) }}{% endmacro %}{{ m(1) }}", "'macro' is not allowed"),
    ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
     "'namespace' is undefined"),
    ("{{ 'x' * 10**9 }}", "repetition result too large"),
    ("{{ 10 ** 10 ** 10 }}", "power result too large"),
    ("{{ 'x' | center(10**9) }}", "integer argument"),
    ("{{ 'x'.ljust(10**9) }}", "integer argument"),
    ("{{ '%0999999999d' % 1 }}", "format width too large"),
    ("{{ '{:>999999999}'.format(1) }}", "format width too large"),
    ("{{ ('x' * 1000000).replace('', 'yy') }}", "result too large"),
    ("{{ lipsum(5) }}", "'lipsum' is undefined"),
])
def test_runaway_templates_are_refused_before_doing_the_work(source: str, refusal: str) -> None:
    """The refusal names the bound that stopped it: the output cap alone would come after gigabytes."""
    started = time.perf_counter()
    with pytest.raises(CallError) as error:
        render_text(source, test_variables("x"))
    elapsed = time.perf_counter() - started
    assert error.value.error_type == "request_template"
    assert refusal in error.value.message
    print(f"{source!r}: refused in {elapsed * 1000:.1f} ms ({error.value.message})")


def test_output_just_under_the_cap_renders() -> None:
    text = render_text("{% for i in range(10000) %}{{ 'x' * 99 }}{% endfor %}", {})
    assert len(text) == 990_000 < MAX_RENDERED_CHARS
