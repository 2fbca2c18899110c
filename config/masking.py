"""Hiding credentials in URLs before they reach a log line or an error message."""

from __future__ import annotations

import re

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")
# libpq and redis-py also take credentials as query parameters.
_SECRET_QUERY = re.compile(r"([?&](?:password|pass|sslpassword|sslkeypassword)=)[^&#]*", re.IGNORECASE)


def mask_url(url: str | None) -> str:
    """Return ``url`` with any password replaced by ``***`` (user names are kept).

    Passwords are often generated and may hold ``/ ? # @`` unescaped, so everything up to the LAST ``@`` is
    taken as user information: masking too much is harmless, showing part of a password is not.
    """
    if not url:
        return ""
    url = _SECRET_QUERY.sub(r"\1***", url)
    scheme = _SCHEME.match(url)
    if not scheme:
        return "(hidden)" if "@" in url else url
    rest = url[scheme.end():]
    if "@" not in rest:
        return url
    userinfo, _, location = rest.rpartition("@")
    if ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme.group(0)}{user}:***@{location}"
