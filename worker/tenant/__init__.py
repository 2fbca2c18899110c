"""Tenant context: which organization and user the running task acts for."""

from worker.tenant.context import Tenant, clear_tenant, current_tenant, set_current_tenant, tenant_scope

__all__ = ["Tenant", "clear_tenant", "current_tenant", "set_current_tenant", "tenant_scope"]
