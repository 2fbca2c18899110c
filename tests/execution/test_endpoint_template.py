"""Request rendering: JSON bodies that prompts cannot break, and a sandbox that refuses escapes and runaway work."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.execution.endpoint import template_limits
from worker.execution.endpoint.errors import CallError
from worker.execution.endpoint.template import (
    MAX_RENDERED_CHARS,
    compile_template,
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
    # Just over the cap, so a missing projection shows as the wrong refusal (the streamed-output cap) without
    # allocating gigabytes.
    ("{{ ('x' * 1000) | replace('x', 'y' * 1001) }}", "replace result too large"),
    ("{{ ('x' * 1000).replace('x', 'y' * 1001) }}", "replace result too large"),
    ("{{ ('a\\n' * 1000) | indent(1001) }}", "indent result too large"),
    ("{{ ('a\\n' * 1000) | indent('y' * 1001) }}", "indent result too large"),
    ("{{ ('ab ' * 1000) | wordwrap(1, True, 'y' * 1000) }}", "wordwrap result too large"),
    ("{{ ('%(a)s' * 11) | format(a='y' * 100000) }}", "format result too large"),
    ("{{ ('{0}' * 11).format('y' * 100000) }}", "format result too large"),
    ("{{ ('{a}' * 11).format_map({'a': 'y' * 100000}) }}", "format result too large"),
    ("{{ ('%(a)s' * 11) % {'a': 'y' * 100000} }}", "% result too large"),
    ("{{ ('x' * 1000) | join('y' * 1001) }}", "join result too large"),
    ("{{ ('y' * 1001).join('x' * 1000) }}", "join result too large"),
    ("{{ ('y' * 1001).join(range(1000) | map('string')) }}", "join result too large"),
    ("{{ ('\\t' * 1000).expandtabs(1001) }}", "expandtabs result too large"),
    ("{{ ('a.com ' * 1000) | urlize(target='y' * 1000) }}", "urlize result too large"),
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


def test_multiplying_filters_under_the_cap_still_render() -> None:
    assert len(render_text("{{ ('x' * 1000) | replace('x', 'y' * 999) }}", {})) == 999_000
    assert render_text("{{ 'a\\nb' | indent(2, first=True) }}", {}) == "  a\n  b"
    assert render_text("{{ 'a b c' | wordwrap(1, True, '|') }}", {}) == "a|b|c"
    assert render_text("{{ [1, 2] | join(', ') }}|{{ '-'.join(['a', 'b']) }}", {}) == "1, 2|a-b"
    assert render_text("{{ '%s=%05d' | format('n', 7) }}|{{ '{:>4}'.format('a') }}", {}) == "n=00007|   a"


@pytest.mark.parametrize(("text", "old", "new", "count"), [
    ("xax", "x", "yy", None), ("xax", "", "--", None), ("xxxx", "x", "abc", 2), ("abc", "b", "", None)])
def test_replace_projection_is_exact_when_growing(text: str, old: str, new: str, count: int | None) -> None:
    real = len(text.replace(old, new) if count is None else text.replace(old, new, count))
    projected = template_limits.replace_size(text, old, new, count)
    assert projected == real if len(new) >= len(old) else projected >= real


def test_projections_bound_the_real_output() -> None:
    text = "one two\nthree\tfour " * 50
    assert template_limits.indent_size(text, 3) >= len(render_text("{{ t | indent(3, true, true) }}", {"t": text}))
    assert template_limits.wordwrap_size(text, 4, "<br>") >= len(
        render_text("{{ t | wordwrap(4, True, '<br>') }}", {"t": text}))
    assert template_limits.expandtabs_size(text, 9) >= len(text.expandtabs(9))
    assert template_limits.join_size(list(text), "ab") == len("ab".join(text))
    assert template_limits.format_size("{0}{0:>20}", ("abc",), {}, 0) >= len("{0}{0:>20}".format("abc"))
    assert template_limits.printf_size("%s%10s", ("abc", "d"), {}, 0) >= len("%s%10s" % ("abc", "d"))  # noqa: UP031


def test_center_projection_refuses_before_padding() -> None:
    from jinja2.filters import do_center
    from jinja2.sandbox import SecurityError
    with pytest.raises(SecurityError, match="center result too large"):
        template_limits.check_filter(do_center, ("x", 2_000_000), {}, 1_000_000, 100_000)
    template_limits.check_filter(do_center, ("x", 999_999), {}, 1_000_000, 100_000)


class _Exhausting:
    def __init__(self, error: type[BaseException]) -> None:
        self.error = error

    def __str__(self) -> str:
        raise self.error()


@pytest.mark.parametrize("error", [MemoryError, RecursionError])
def test_memory_and_recursion_errors_are_request_template_errors(error: type[BaseException]) -> None:
    with pytest.raises(CallError) as raised:
        render_text("{{ v }}", {"v": _Exhausting(error)})
    assert raised.value.error_type == "request_template"
    assert error.__name__ in raised.value.message


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="{\r"), max_size=60))
def test_text_without_tags_renders_as_jinja_would(source: str) -> None:
    # render_text skips Jinja for such text; the result must be what Jinja itself renders.
    assert render_text(source, {}) == compile_template(source).render() == source
