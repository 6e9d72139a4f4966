"""config.yaml: its models, the YAML positions behind error messages, units, schema and
the handler registry. Everything here is validation; nothing binds or connects."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_attributes

if TYPE_CHECKING:
    from .load import load_config, parse_config
    from .models import RESERVED_PATHS, Config, Endpoint, Policy, Settings
    from .registry import Registry

__all__ = ["RESERVED_PATHS", "Config", "Endpoint", "Policy", "Registry", "Settings", "load_config", "parse_config"]

# A plugin that imports the units (through ``wsgate``) runs this file; the config
# models, the YAML loader and the authenticators load when first named.
_LAZY = {
    "load_config": ".load",
    "parse_config": ".load",
    **dict.fromkeys(["RESERVED_PATHS", "Config", "Endpoint", "Policy", "Settings"], ".models"),
    "Registry": ".registry",
}

__getattr__ = lazy_attributes(__name__, _LAZY)
