"""Environment to validated settings: the one place where the product reads its configuration."""

from config.loader import Settings, load_settings
from config.masking import mask_url
from config.spec import ConfigError

__all__ = ["ConfigError", "Settings", "load_settings", "mask_url"]
