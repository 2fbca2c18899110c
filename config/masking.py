"""Hiding credentials in URLs before they reach a log line or an error message."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:@/]*)(?::[^@/]*)?@")


def mask_url(url: str | None) -> str:
    """Return ``url`` with any password replaced by ``***`` (user names are kept)."""
    if not url:
        return ""
    match = _USERINFO.match(url)
    if not match or ":" not in url[len(match.group("scheme")) : match.end()]:
        return url
    return f"{match.group('scheme')}{match.group('user')}:***@{url[match.end():]}"
