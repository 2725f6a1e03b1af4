"""Settings for every process, read from the environment with working local defaults."""

from config.settings import Settings

__all__ = ["Settings"]
