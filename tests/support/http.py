"""A status code from a loopback HTTP server (Flower), with optional basic auth; 0 when nothing answers."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request


def http_status(url: str, auth: tuple[str, str] | str | None = None) -> int:
    """``auth`` is ``(user, password)`` or ``"user:password"``."""
    request = urllib.request.Request(url)  # noqa: S310 - http://127.0.0.1 only
    if auth:
        credentials = auth if isinstance(auth, str) else f"{auth[0]}:{auth[1]}"
        request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - http://127.0.0.1 only
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0
