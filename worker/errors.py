"""Errors that retrying cannot fix; BaseTask never retries them."""

from __future__ import annotations


class PermanentTaskError(Exception):
    """Base for errors that a retry cannot fix."""


class TenantContextError(PermanentTaskError):
    """A tenant-scoped operation was attempted without an organization in the task context."""


class InvalidIdentifierError(PermanentTaskError, ValueError):
    """An id that must be a UUID is not one; the message names which id (e.g. ``test_configuration_id``)."""


class InvalidTenantError(InvalidIdentifierError):
    """An organization_id or user_id is not a valid UUID."""


class TenantConflictError(PermanentTaskError):
    """The message headers and the kwargs name different tenants."""


class TaskConfigurationError(PermanentTaskError):
    """The task or the worker is misconfigured."""
