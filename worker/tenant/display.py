"""Show a message's tenant where operators look: Flower's args/kwargs columns.

The tenant travels in the message headers ``organization_id``/``user_id``, which Flower never displays. Flower
shows the Celery protocol 2 headers ``argsrepr``/``kwargsrepr`` (the worker copies them into its task events), so
the publish hook appends one entry to ``kwargsrepr``::

    {'message': 'hi', '[tenant]': 'organization_id=0b7d... user_id=5a2e...'}

Only that display string changes: the task's real arguments live in the message body and stay as they were.
``[tenant]`` is no valid keyword name, so the entry cannot be mistaken for a real argument. A ``kwargsrepr``
the producer chose itself (to hide a secret, say) is kept and the tenant is written after it.
"""

from __future__ import annotations

from typing import Any

from worker.logging_context import printable

KWARGSREPR_HEADER = "kwargsrepr"
TENANT_ENTRY = "[tenant]"
_ENTRY_KEY = repr(TENANT_ENTRY)
# Ids are UUIDs; a producer's oversized header must not bloat every event Flower stores.
_MAX_ID_LENGTH = 64


def _shown(value: Any) -> str:
    # Escaped: the value comes from a message and lands in Flower's pages and in anything that logs kwargsrepr.
    return printable(value, limit=_MAX_ID_LENGTH) if value else "-"


def tenant_label(organization_id: Any, user_id: Any) -> str:
    """``organization_id=<id> user_id=<id>``, the same words the log lines use (``-`` for none)."""
    return f"organization_id={_shown(organization_id)} user_id={_shown(user_id)}"


def annotate_kwargsrepr(kwargsrepr: str | None, label: str) -> str:
    """``kwargsrepr`` with the tenant entry added; unchanged when it already carries one (a republished message)."""
    if kwargsrepr and _ENTRY_KEY in kwargsrepr:
        return kwargsrepr
    entry = f"{_ENTRY_KEY}: {label!r}"
    if not kwargsrepr or kwargsrepr == "{}":
        return "{" + entry + "}"
    if kwargsrepr.startswith("{") and kwargsrepr.endswith("}"):
        return f"{kwargsrepr[:-1]}, {entry}}}"
    return f"{kwargsrepr} {TENANT_ENTRY} {label}"


def show_tenant_in_kwargsrepr(headers: dict[str, Any], organization_id: Any, user_id: Any) -> None:
    """Annotate an outgoing protocol 2 message's ``kwargsrepr`` with its tenant, if it has one."""
    if not organization_id or KWARGSREPR_HEADER not in headers:
        return  # no tenant, or a protocol 1 message without display headers
    headers[KWARGSREPR_HEADER] = annotate_kwargsrepr(headers[KWARGSREPR_HEADER], tenant_label(organization_id, user_id))
