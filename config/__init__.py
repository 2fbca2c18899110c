"""Environment to validated settings: the one place where the product reads its configuration."""

from config.loader import load_settings
from config.masking import mask_url
from config.settings import Settings
from config.spec import SCOPES, ConfigError

__all__ = ["SCOPES", "ConfigError", "Settings", "load_settings", "mask_url"]
