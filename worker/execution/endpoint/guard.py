"""Target guard: endpoint calls may not reach the worker's own network (SSRF).

The check runs where the connection is made: the session's connector resolves every host name through
GuardedResolver, which drops refused addresses from the answer and raises BlockedTarget when none is left. The
connector then connects only to the addresses the guard saw, so a name that resolves to a public address for a
pre-check and to 127.0.0.1 a moment later (DNS rebinding) cannot get through. aiohttp does not ask the resolver
about IP literals, so ``check_url`` refuses those (and non-http schemes) before each request, including every
redirect hop.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from functools import lru_cache

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from worker.execution.endpoint.errors import BlockedTarget

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})
# Carrier-grade NAT space: Python 3.11 leaves it out of is_private (it is not global either, which is what
# the guard asks), listed so the intent is visible.
_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")
# The NAT64 well-known prefix carries an IPv4 address in its last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d), 6to4,
    Teredo client, NAT64."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or (address.packed[:12] == bytes(12) and int(address) > 1):
        return ipaddress.IPv4Address(address.packed[12:])
    return None


def is_public(address: IPAddress) -> bool:
    """True for an address on the public internet: not loopback, private (RFC 1918, ULA), link-local (cloud
    metadata at 169.254.169.254), unspecified, multicast, reserved, documentation or shared (100.64/10) space,
    nor an IPv6 form of one of those."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public(embedded)
    if address in _SHARED_ADDRESS_SPACE:
        return False
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


@lru_cache(maxsize=1024)
def _parse_literal(host: str) -> IPAddress | None:
    # Every call checks its URL; an endpoint's host is the same string each time, and parsing it is not free.
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class TargetGuard:
    """``allow_private`` turns the address check off (tests, ``make run`` against loopback); the scheme check
    stays. ``extra_allowed_networks`` exists for tests that need one loopback server treated as public."""

    def __init__(self, *, allow_private: bool, extra_allowed_networks: Iterable[str] = ()) -> None:
        self.allow_private = allow_private
        self._extra: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in extra_allowed_networks)

    def allows(self, address: IPAddress) -> bool:
        if self.allow_private or any(address in network for network in self._extra
                                     if network.version == address.version):
            return True
        return is_public(address)

    def check_url(self, url: URL) -> None:
        """Raises BlockedTarget for a scheme other than http(s) or a refused IP literal. Host names are
        checked later, by GuardedResolver, at connect time."""
        if url.scheme not in ALLOWED_SCHEMES:
            raise BlockedTarget(f"scheme {url.scheme!r} is not allowed (http and https only)")
        host = url.raw_host or ""
        if not host:
            raise BlockedTarget("URL has no host")
        literal = _parse_literal(host)
        if literal is not None:
            if not self.allows(literal):
                raise BlockedTarget(f"address {literal} is not a public address")
        elif all(_NUMERIC_LABEL.fullmatch(label) for label in host.lower().rstrip(".").split(".")):
            # 2130706433, 127.1, 0x7f.1: legacy numeric forms that getaddrinfo would turn into an address.
            raise BlockedTarget(f"numeric host {host!r} is not a canonical IP address")


class GuardedResolver(AbstractResolver):
    """Wraps the connector's resolver and hands on only the addresses the guard allows."""

    def __init__(self, guard: TargetGuard, inner: AbstractResolver) -> None:
        self._guard = guard
        self._inner = inner

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [result for result in results if self._guard.allows(ipaddress.ip_address(result["host"]))]
        if not allowed:
            refused = ", ".join(sorted({result["host"] for result in results})) or "no address"
            raise BlockedTarget(f"{host} resolves to {refused}, not a public address")
        return allowed

    async def close(self) -> None:
        await self._inner.close()
