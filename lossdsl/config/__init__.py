"""Configs: a LossConfig from a mapping or a YAML/JSON/TOML file, with positions for errors."""

from .model import ConfigError, LossConfig, from_config, load_config

__all__ = ["ConfigError", "LossConfig", "from_config", "load_config"]
