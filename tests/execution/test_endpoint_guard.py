"""Target guard: calls into loopback, private, link-local and other non-public space are refused, at connect
time for host names (resolver) and before the request for IP literals, on every redirect hop and token fetch."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import quote

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from tests.execution.test_endpoint_client import CHAT_MAPPING, chat, invoke, new_id
from tests.support.endpoint_server import EndpointServer
from worker.execution.endpoint.errors import BlockedTarget
from worker.execution.endpoint.guard import GuardedResolver, TargetGuard, is_public
from worker.execution.spec import EndpointAuth, EndpointSpec

LOOPBACK_AS_PUBLIC = ("127.0.0.1/32",)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.255.0.9", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "255.255.255.255", "224.0.0.1", "240.0.0.1", "192.0.2.1",
    "::1", "::", "fe80::1", "fc00::1", "fd12::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
    "::127.0.0.1", "2002:7f00:1::", "64:ff9b::a00:1",
])
def test_non_public_addresses(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:{port}/chat",
    "http://localhost:{port}/chat",
    "http://[::1]:{port}/chat",
    "http://[::ffff:127.0.0.1]:{port}/chat",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/chat",
    "http://0.0.0.0:{port}/chat",
    "http://127.1:{port}/chat",
    "http://2130706433:{port}/chat",
    "http://0x7f.0.0.1:{port}/chat",
    "file:///etc/passwd",
    "ftp://127.0.0.1/",
])
def test_private_targets_are_refused_and_never_reached(server: EndpointServer, url: str) -> None:
    test_id = new_id()
    endpoint = EndpointSpec(id="e", url=url.format(port=server.url.rsplit(":", 1)[1]), request_mapping=CHAT_MAPPING)
    result = invoke(endpoint, test_id=test_id, allow_private_targets=False)
    assert (result.ok, result.error_type) == (False, "blocked_target"), result
    assert result.attempts <= 1  # refused before sending (literal) or at connect (name): never retried
    assert server.calls[test_id] == 0


def test_a_host_name_is_checked_by_the_resolver_at_connect_time(server: EndpointServer) -> None:
    port = server.url.rsplit(":", 1)[1]
    result = invoke(EndpointSpec(id="e", url=f"http://localhost:{port}/chat"), allow_private_targets=False)
    assert result.error_type == "blocked_target"
    assert "localhost resolves to" in (result.error or "")


class _FixedResolver(AbstractResolver):
    """DNS that answers from a script: one list of addresses per lookup (the last one repeats)."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        addresses = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return [{"hostname": host, "host": a, "port": port, "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
                 "proto": 0, "flags": 0} for a in addresses]

    async def close(self) -> None:
        return None


def test_resolver_drops_refused_addresses_and_refuses_a_rebinding_answer() -> None:
    async def go() -> None:
        resolver = GuardedResolver(TargetGuard(allow_private=False),
                                   _FixedResolver(["93.184.215.14", "127.0.0.1", "::ffff:10.0.0.1"], ["127.0.0.1"]))
        first = await resolver.resolve("rebind.example", 80)
        assert [r["host"] for r in first] == ["93.184.215.14"]
        with pytest.raises(BlockedTarget, match=r"rebind\.example resolves to 127\.0\.0\.1"):
            await resolver.resolve("rebind.example", 80)
        allowing = GuardedResolver(TargetGuard(allow_private=True), _FixedResolver(["127.0.0.1"]))
        assert len(await allowing.resolve("localhost", 80)) == 1

    asyncio.run(go())


def test_a_redirect_from_an_allowed_target_to_a_refused_one_is_refused(server: EndpointServer) -> None:
    port = server.url.rsplit(":", 1)[1]
    for target in (f"http://127.0.0.2:{port}/chat", "http://169.254.169.254/latest/meta-data/",
                   f"http://[::1]:{port}/chat"):
        test_id = new_id()
        result = invoke(chat(server, path=f"/redirect?to={quote(target, safe='')}"), test_id=test_id,
                        allow_private_targets=False, extra_allowed_networks=LOOPBACK_AS_PUBLIC)
        assert (result.error_type, result.attempts) == ("blocked_target", 1), (target, result)
    # The same redirect to an allowed target is followed: 307 keeps the method and body.
    test_id = new_id()
    result = invoke(chat(server, path=f"/redirect?status=307&to={quote(server.url + '/chat', safe='')}",
                         response_mapping={"output": "$.output"}), "via redirect", test_id=test_id,
                    allow_private_targets=False, extra_allowed_networks=LOOPBACK_AS_PUBLIC)
    assert result.ok and result.output == "echo: via redirect" and server.calls[test_id] == 1


def test_303_becomes_get(server: EndpointServer) -> None:
    result = invoke(chat(server, path=f"/redirect?status=303&to={quote(server.url + '/headers', safe='')}",
                         response_mapping={"output": "$.method"}))
    assert result.output == "GET"


def test_redirect_to_another_origin_does_not_carry_credentials(server: EndpointServer) -> None:
    port = server.url.rsplit(":", 1)[1]
    other_origin = f"http://localhost:{port}/headers"
    result = invoke(chat(server, path=f"/redirect?status=307&to={quote(other_origin, safe='')}",
                         headers={"X-Api-Key": "configured-key", "X-Trace": "keep"},
                         response_mapping={"output": "$.headers"},
                         auth=EndpointAuth(kind="bearer_token", token="bearer-secret-9")))
    assert result.ok
    assert "bearer-secret-9" not in (result.output or "") and "configured-key" not in (result.output or "")
    assert '"X-Trace": "keep"' in (result.output or "")


def test_redirect_limit(server: EndpointServer) -> None:
    hops = server.url + "/text"
    for _ in range(6):
        hops = server.url + "/redirect?to=" + quote(hops, safe="")
    result = invoke(EndpointSpec(id="e", url=hops, method="GET", response_format="text"))
    assert (result.error_type, result.http_status) == ("http_4xx", 302)
    assert "redirected more than 5 times" in (result.error or "")


def test_the_token_url_passes_the_guard(server: EndpointServer) -> None:
    auth = EndpointAuth(kind="oauth2_client_credentials", token_url="http://169.254.169.254/token",
                        client_id="c", client_secret="never-sent-secret")
    result = invoke(chat(server, auth=auth), allow_private_targets=False, extra_allowed_networks=LOOPBACK_AS_PUBLIC)
    assert result.error_type == "blocked_target"
    assert "token endpoint" in (result.error or "") and "never-sent-secret" not in (result.error or "")
