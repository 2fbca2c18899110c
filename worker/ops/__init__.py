"""Operator commands (``python -m worker doctor|queues|stuck|revoke|purge|inspect``): docs/troubleshooting.md.

``worker.ops.control`` is imported by the app, so that every worker answers the ``tenant_tasks`` inspection.
"""
