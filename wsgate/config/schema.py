"""JSON Schema of config.yaml, built from the models that validate it."""

from __future__ import annotations

from typing import Any

from ..errors import HandlerLoadError
from .models import Config
from .registry import Registry

__all__ = ["config_schema"]


def config_schema(registry: Registry) -> dict[str, Any]:
    """The schema, with each registered handler's ``options`` tied to its name."""
    schema = Config.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "wsgate config.yaml"
    defs = schema.setdefault("$defs", {})
    endpoint = defs["EndpointSpec"]
    branches = []
    for name in registry.names():
        try:
            options = registry.resolve(name).Options.model_json_schema()
        except HandlerLoadError:
            continue
        defs.update(options.pop("$defs", {}))
        branches.append({
            "if": {"properties": {"handler": {"const": name}}, "required": ["handler"]},
            "then": {"properties": {"options": options}},
        })
    if branches:
        endpoint["allOf"] = branches
    endpoint["properties"]["handler"]["examples"] = [*registry.names(), "handlers.shout:Shout"]
    return schema
