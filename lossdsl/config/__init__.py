"""Configs: a LossConfig from a mapping or a YAML/JSON/TOML file, with positions for errors."""

from .model import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    ConfigError,
    LossConfig,
    MonitorSettings,
    from_config,
    load_config,
)

__all__ = [
    "ConfigError", "LossConfig", "MonitorSettings", "from_config", "load_config", "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
]
