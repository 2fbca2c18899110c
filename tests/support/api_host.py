"""A stand-in host backend's authentication: the current user from two headers (the host's own scheme).

Used to mount the router in a host app in-process, and as ``python -m worker api --auth
tests.support.api_host:header_user``.
"""

from __future__ import annotations

from types import SimpleNamespace

from fastapi import Header, HTTPException


def header_user(x_organization_id: str | None = Header(None),
                x_user_id: str | None = Header(None)) -> SimpleNamespace:
    if not x_organization_id:
        raise HTTPException(status_code=401, detail="host: not signed in")
    return SimpleNamespace(id=x_user_id, organization_id=x_organization_id)
