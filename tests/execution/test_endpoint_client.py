"""EndpointClient against a real aiohttp server on loopback: mapping, retries, caps, auth, concurrency."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
import uuid
from typing import Any

from tests.support.endpoint_server import EndpointServer
from worker.execution.endpoint import EndpointClient, test_variables
from worker.execution.spec import EndpointAuth, EndpointSpec, Invocation, RetryPolicy

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, retry_after_cap=5.0)
CHAT_MAPPING = {"input": "{{ input }}", "test_id": "{{ test_id }}"}


def chat(server: EndpointServer, path: str = "/chat", **fields: Any) -> EndpointSpec:
    fields.setdefault("request_mapping", CHAT_MAPPING)
    fields.setdefault("timeout_seconds", 5.0)
    return EndpointSpec(id="e", url=server.url + path, **fields)


def invoke(endpoint: EndpointSpec, prompt: str = "hello", *, test_id: str | None = None,
           **client: Any) -> Invocation:
    client.setdefault("allow_private_targets", True)
    client.setdefault("retry", FAST_RETRY)

    async def go() -> Invocation:
        async with EndpointClient(**client) as endpoint_client:
            return await endpoint_client.invoke(endpoint, test_variables(prompt, test_id=test_id or new_id()))

    return asyncio.run(go())


def new_id() -> str:
    return uuid.uuid4().hex


def test_json_answer_is_mapped(server: EndpointServer) -> None:
    result = invoke(chat(server, response_mapping={"output": "$.output", "metadata": "$.meta",
                                                   "context": "$.missing"}), 'say "hi"\n', test_id="t1")
    assert result.ok, result
    assert result.output == 'echo: say "hi"\n'
    assert result.metadata == {"test_id": "t1", "call": 1}
    assert result.context is None
    assert (result.http_status, result.attempts) == (200, 1)
    assert result.latency_ms is not None and result.latency_ms > 0


def test_without_an_output_mapping_the_whole_json_body_is_the_output(server: EndpointServer) -> None:
    result = invoke(chat(server), "x", test_id="whole")
    assert result.ok and result.output == '{"output": "echo: x", "meta": {"test_id": "whole", "call": 1}}'


def test_filter_jsonpath_and_non_string_output(server: EndpointServer) -> None:
    result = invoke(chat(server, response_mapping={"output": "$.meta"}), "x", test_id="m")
    assert result.output == '{"test_id": "m", "call": 1}'
    result = invoke(chat(server, path="/headers", response_mapping={"output": "$.headers[?(@ == 'ok')]"}))
    assert result.error_type == "response_mapping"


def test_output_that_matches_nothing_is_a_mapping_error(server: EndpointServer) -> None:
    result = invoke(chat(server, response_mapping={"output": "$.answer.text"}))
    assert (result.ok, result.error_type, result.attempts) == (False, "response_mapping", 1)


def test_text_answer_and_non_json_answer(server: EndpointServer) -> None:
    assert invoke(chat(server, path="/text", method="GET", response_format="text")).output == "plain answer"
    result = invoke(chat(server, path="/text", method="GET"))
    assert result.error_type == "response_mapping"


def test_output_is_capped(server: EndpointServer) -> None:
    server.configure(answer="y" * 5000)
    result = invoke(chat(server, response_mapping={"output": "$.output"}), max_output_chars=100)
    assert result.output == "y" * 100


def test_503_then_success_is_retried(server: EndpointServer) -> None:
    server.configure(fail_first=1, fail_status=503)
    test_id = new_id()
    result = invoke(chat(server), test_id=test_id)
    assert result.ok and result.attempts == 2 and server.calls[test_id] == 2


def test_5xx_every_time_ends_http_5xx_with_the_last_status(server: EndpointServer) -> None:
    server.configure(fail_first=10, fail_status=502)
    test_id = new_id()
    result = invoke(chat(server), test_id=test_id)
    assert (result.ok, result.error_type, result.http_status, result.attempts) == (False, "http_5xx", 502, 3)
    assert server.calls[test_id] == 3
    assert result.error and "502" in result.error


def test_404_is_not_retried(server: EndpointServer) -> None:
    server.configure(status=404)
    test_id = new_id()
    result = invoke(chat(server), test_id=test_id)
    assert (result.error_type, result.http_status, result.attempts, server.calls[test_id]) == ("http_4xx", 404, 1, 1)


def test_429_waits_for_retry_after_in_seconds(server: EndpointServer) -> None:
    server.configure(fail_first=1, fail_status=429, retry_after="1")
    started = time.perf_counter()
    result = invoke(chat(server))
    waited = time.perf_counter() - started
    assert result.ok and result.attempts == 2
    assert 1.0 <= waited < 4.0, waited


def test_429_waits_for_retry_after_as_an_http_date(server: EndpointServer) -> None:
    # An HTTP-date has whole seconds: 3 s ahead means a wait of more than 2 s.
    server.configure(fail_first=1, fail_status=429, retry_after=email.utils.formatdate(time.time() + 3, usegmt=True))
    started = time.perf_counter()
    result = invoke(chat(server))
    waited = time.perf_counter() - started
    assert result.ok and result.attempts == 2
    assert 2.0 <= waited < 5.0, waited


def test_429_with_retry_after_over_the_cap_stops_rate_limited(server: EndpointServer) -> None:
    server.configure(fail_first=5, fail_status=429, retry_after="3600")
    started = time.perf_counter()
    result = invoke(chat(server))
    assert (result.error_type, result.http_status, result.attempts) == ("rate_limited", 429, 1)
    assert time.perf_counter() - started < 2.0


def test_429_without_retry_after_backs_off_and_ends_rate_limited(server: EndpointServer) -> None:
    server.configure(fail_first=5, fail_status=429)
    result = invoke(chat(server))
    assert (result.error_type, result.attempts) == ("rate_limited", 3)


def test_timeout_is_retried_then_reported(server: EndpointServer) -> None:
    server.configure(latency=1.0)
    test_id = new_id()
    result = invoke(chat(server, timeout_seconds=0.2), test_id=test_id,
                    retry=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.01))
    assert (result.error_type, result.attempts) == ("timeout", 2)
    assert server.calls[test_id] == 2


def test_connection_refused(server: EndpointServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = invoke(EndpointSpec(id="e", url=f"http://127.0.0.1:{port}/chat", request_mapping=CHAT_MAPPING))
    assert (result.error_type, result.attempts) == ("connection", 3)
    assert f"127.0.0.1:{port}" in (result.error or "")


def test_body_over_the_cap_is_refused_with_and_without_content_length(server: EndpointServer) -> None:
    for query in ("?bytes=300000", "?bytes=300000&length=1"):
        result = invoke(chat(server, path="/huge" + query, method="GET"), max_response_bytes=100_000)
        assert (result.error_type, result.attempts) == ("response_too_large", 1), query
    assert invoke(chat(server, path="/huge?bytes=1000", method="GET", response_format="text"),
                  max_response_bytes=100_000).output == "x" * 1000


def test_bearer_api_key_configured_headers_query_and_user_agent(server: EndpointServer) -> None:
    result = invoke(chat(server, path="/headers", headers={"X-Test-Id": "{{ test_id }}"},
                         query_params={"q": "{{ input }}"},
                         response_mapping={"output": "$.headers", "context": "$.query"},
                         auth=EndpointAuth(kind="bearer_token", token="bearer-secret-1")), "a b&c", test_id="h1")
    assert result.ok
    assert '"Authorization": "Bearer bearer-secret-1"' in (result.output or "")
    assert '"X-Test-Id": "h1"' in (result.output or "")
    assert '"User-Agent": "rhesis-worker"' in (result.output or "")
    assert result.context == {"q": "a b&c"}
    result = invoke(chat(server, path="/headers", response_mapping={"output": "$.headers"},
                         auth=EndpointAuth(kind="api_key", token="key-secret-2", header_name="X-Api-Key")))
    assert '"X-Api-Key": "key-secret-2"' in (result.output or "")


def test_secrets_never_appear_in_errors(server: EndpointServer) -> None:
    # The endpoint echoes the credential in its error body; the error line keeps the body, not the secret.
    for auth in (EndpointAuth(kind="bearer_token", token="bearer-secret-1"),
                 EndpointAuth(kind="api_key", token="key-secret-2")):
        server.configure(status=400, answer=f"bad credential {auth.token}")
        result = invoke(chat(server, auth=auth))
        assert result.error_type == "http_4xx"
        assert "bad credential ***" in (result.error or ""), result.error
        assert str(auth.token) not in (result.error or ""), result.error
    wrong = EndpointAuth(kind="oauth2_client_credentials", token_url=server.url + "/token", client_id="client-1",
                         client_secret="wrong-secret-value")
    result = invoke(chat(server, path="/protected", auth=wrong))
    assert (result.error_type, result.http_status) == ("http_4xx", 401)
    assert "secret" not in (result.error or "") and "token endpoint" in (result.error or "")


def test_a_secret_straddling_the_snippet_cut_is_scrubbed(server: EndpointServer) -> None:
    """The error line keeps 200 characters of the body; a secret across that cut must not leave its head."""
    token = "bearer-secret-straddling-1"
    prefix = '{"output": "'  # how the test server's JSON answer starts
    for start in (190, 195, 199):
        server.configure(status=400, answer="p" * (start - len(prefix)) + token)
        result = invoke(chat(server, auth=EndpointAuth(kind="bearer_token", token=token)))
        assert result.error_type == "http_4xx"
        assert token[:4] not in (result.error or ""), result.error
        assert "p*" in (result.error or ""), result.error  # the marker itself may be cut


def test_a_secret_cut_by_the_error_read_limit_leaves_no_head(server: EndpointServer) -> None:
    # Whitespace folding would bring the end of the 2048 bytes read into the 200-character snippet.
    token = "bearer-secret-at-the-read-limit"
    prefix = '{"output": "'
    server.configure(status=400, answer=" " * (2040 - len(prefix)) + token)
    result = invoke(chat(server, auth=EndpointAuth(kind="bearer_token", token=token)))
    assert result.error_type == "http_4xx"
    assert token[:4] not in (result.error or ""), result.error


def oauth(server: EndpointServer) -> EndpointAuth:
    return EndpointAuth(kind="oauth2_client_credentials", token_url=server.url + "/token", client_id="client-1",
                        client_secret=server.client_secret, scopes=("read", "write"), audience="api://llm")


def test_oauth_token_is_fetched_once_for_many_calls_and_refreshed_after_401(server: EndpointServer) -> None:
    endpoint = chat(server, path="/protected", response_mapping={"output": "$.output"}, auth=oauth(server))
    before = server.token_requests

    async def go() -> tuple[list[Invocation], list[Invocation]]:
        async with EndpointClient(allow_private_targets=True, retry=FAST_RETRY) as client:
            first = await asyncio.gather(*(client.invoke(endpoint, test_variables(f"p{i}", test_id=new_id()))
                                           for i in range(20)))
            server.revoke_tokens()
            second = await asyncio.gather(*(client.invoke(endpoint, test_variables(f"q{i}", test_id=new_id()))
                                            for i in range(5)))
            return first, second

    first, second = asyncio.run(go())
    assert all(r.ok for r in first), [r.error for r in first if not r.ok]
    assert all(r.ok for r in second), [r.error for r in second if not r.ok]
    assert server.token_requests - before == 2
    assert server.token_forms[-1] == {"grant_type": "client_credentials", "client_id": "client-1",
                                      "client_secret": server.client_secret, "scope": "read write",
                                      "audience": "api://llm"}
    assert {r.attempts for r in second} == {2}


def test_oauth_tokens_are_never_shared_between_endpoints(server: EndpointServer) -> None:
    """One client serves every tenant: endpoints that copy another's token_url, client_id, scopes and audience
    get their own token, and with a wrong secret an error, never the cached one."""
    owner = EndpointSpec(id="endpoint-of-org-a", url=server.url + "/headers", request_mapping=CHAT_MAPPING,
                         auth=oauth(server))
    copycat = EndpointSpec(id="endpoint-of-org-b", url=owner.url, request_mapping=CHAT_MAPPING, auth=oauth(server))
    wrong_secret = EndpointSpec(id="endpoint-of-org-c", url=owner.url, request_mapping=CHAT_MAPPING,
                                auth=EndpointAuth(kind="oauth2_client_credentials", token_url=server.url + "/token",
                                                  client_id="client-1", client_secret="not-the-secret",
                                                  scopes=("read", "write"), audience="api://llm"))
    same_id_wrong_secret = EndpointSpec(id=owner.id, url=owner.url, request_mapping=CHAT_MAPPING,
                                        auth=wrong_secret.auth)
    before_tokens, before_requests = server.token_requests, len(server.requests)

    async def go() -> list[Invocation]:
        async with EndpointClient(allow_private_targets=True, retry=FAST_RETRY) as client:
            results = []
            for endpoint in (owner, owner, copycat, wrong_secret, same_id_wrong_secret):
                results.append(await client.invoke(endpoint, test_variables("p", test_id=new_id())))
            return results

    first, again, copied, wrong, same_id_wrong = asyncio.run(go())
    assert first.ok and again.ok and copied.ok, (first.error, again.error, copied.error)
    # owner twice from the cache, copycat its own fetch, both wrong-secret endpoints a (refused) fetch each.
    assert server.token_requests - before_tokens == 4
    seen = [headers.get("Authorization") for path, headers, _body in server.requests[before_requests:]
            if path == "/headers"]
    owner_token = f"Bearer token-{before_tokens + 1}"
    assert seen == [owner_token, owner_token, f"Bearer token-{before_tokens + 2}"], seen
    for refused in (wrong, same_id_wrong):
        assert (refused.ok, refused.error_type, refused.http_status) == (False, "http_4xx", 401), refused
        assert "token endpoint" in (refused.error or "")


def test_a_401_drops_only_that_endpoints_token(server: EndpointServer) -> None:
    first = EndpointSpec(id="first", url=server.url + "/unauthorized-once", request_mapping=CHAT_MAPPING,
                         auth=oauth(server))
    second = EndpointSpec(id="second", url=server.url + "/headers", request_mapping=CHAT_MAPPING, auth=oauth(server))
    before_tokens, before_requests = server.token_requests, len(server.requests)

    async def go() -> list[Invocation]:
        async with EndpointClient(allow_private_targets=True, retry=FAST_RETRY) as client:
            warm = await client.invoke(second, test_variables("p", test_id=new_id()))
            rejected = await client.invoke(first, test_variables("p", test_id=new_id()))
            after = await client.invoke(second, test_variables("p", test_id=new_id()))
            return [warm, rejected, after]

    warm, rejected, after = asyncio.run(go())
    assert warm.ok and rejected.ok and after.ok, (warm.error, rejected.error, after.error)
    assert rejected.attempts == 2
    # second: 1 fetch; first: 1 fetch + 1 after its 401. second's token survived first's 401.
    assert server.token_requests - before_tokens == 3
    seen = [headers.get("Authorization") for path, headers, _body in server.requests[before_requests:]
            if path == "/headers"]
    assert seen == [f"Bearer token-{before_tokens + 1}"] * 2, seen


def test_a_401_without_oauth_is_not_retried(server: EndpointServer) -> None:
    result = invoke(chat(server, path="/unauthorized-once", auth=EndpointAuth(kind="bearer_token", token="b")))
    assert (result.error_type, result.http_status, result.attempts) == ("http_4xx", 401, 1)


def test_invalid_endpoint_definitions(server: EndpointServer) -> None:
    assert invoke(chat(server, method="TRACE")).error_type == "invalid_endpoint"
    assert invoke(chat(server, response_mapping={"output": "$$[bad"})).error_type == "invalid_endpoint"
    assert invoke(EndpointSpec(id="e", url="/relative")).error_type == "invalid_endpoint"
    assert invoke(chat(server, request_mapping={"q": "{{ nope }}"})).error_type == "request_template"


def test_cancellation_propagates_promptly(server: EndpointServer) -> None:
    server.configure(latency=5.0)

    async def go() -> float:
        async with EndpointClient(allow_private_targets=True) as client:
            task = asyncio.create_task(client.invoke(chat(server, timeout_seconds=30), test_variables("x")))
            await asyncio.sleep(0.2)
            task.cancel()
            started = time.perf_counter()
            try:
                await task
            except asyncio.CancelledError:
                return time.perf_counter() - started
            raise AssertionError("invoke swallowed the cancellation")

    assert asyncio.run(go()) < 1.0


def test_200_concurrent_calls_through_one_client(server: EndpointServer) -> None:
    server.configure(latency=0.1)
    server.in_flight_max = 0

    async def go() -> list[Invocation]:
        async with EndpointClient(allow_private_targets=True, retry=FAST_RETRY) as client:
            return await asyncio.gather(*(client.invoke(chat(server), test_variables(f"p{i}", test_id=new_id()))
                                          for i in range(200)))

    started = time.perf_counter()
    results = asyncio.run(go())
    elapsed = time.perf_counter() - started
    print(f"200 concurrent calls against a 100 ms server: {elapsed:.2f} s, max in flight {server.in_flight_max}")
    assert all(r.ok for r in results), {r.error for r in results if not r.ok}
    assert server.in_flight_max >= 150
