"""config.yaml: its models, the YAML positions behind error messages, units, schema and
the handler registry. Everything here is validation; nothing binds or connects."""

from __future__ import annotations

from .load import load_config, parse_config
from .models import RESERVED_PATHS, Config, Endpoint, Policy, Settings
from .registry import Registry

__all__ = ["RESERVED_PATHS", "Config", "Endpoint", "Policy", "Registry", "Settings", "load_config", "parse_config"]
