"""What every generated Settings class can do beyond holding its fields (see config/settings.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self


class SettingsBase:
    """Construction from parsed values, helpful errors for unknown or unloaded names, a repr without secrets."""

    __slots__ = ()

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Self:
        """Settings holding ``values`` (keyed by variable name). A load limited to some scopes or names leaves the
        other fields unset: reading one raises AttributeError instead of handing out an unvalidated value."""
        settings = object.__new__(cls)
        for name, value in values.items():
            object.__setattr__(settings, name.lower(), value)  # frozen: the dataclass __setattr__ refuses
        return settings

    def __getattr__(self, name: str) -> Any:
        # Reached only when normal lookup failed: a misspelt name, or a field this load did not validate.
        if name in getattr(type(self), "__dataclass_fields__", {}):
            raise AttributeError(f"setting {name.upper()} was not loaded: this process validated only some scopes "
                                 "(see worker.settings.get_settings)")
        raise AttributeError(f"there is no setting {name!r} (declared in config/options.py)")

    @property
    def loaded(self) -> tuple[str, ...]:
        """The variable names this object holds."""
        fields = getattr(type(self), "__dataclass_fields__", {})
        return tuple(name.upper() for name in fields if _has_slot_value(self, name))

    @property
    def migration_url(self) -> str:
        """The URL migrations run with: MIGRATION_DATABASE_URL, else DATABASE_URL."""
        return self.migration_database_url or self.database_url  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        # Names only: values include passwords.
        return f"{type(self).__name__}(loaded: {', '.join(self.loaded)})"


def _has_slot_value(settings: SettingsBase, name: str) -> bool:
    try:
        object.__getattribute__(settings, name)
    except AttributeError:
        return False
    return True
