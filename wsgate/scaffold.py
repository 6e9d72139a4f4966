"""``wsgate init``: a new project that serves, and passes its own tests, as written."""

from __future__ import annotations

import json
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from .config import Registry
from .config.schema import config_schema

__all__ = ["PROJECT_FILES", "init_project"]

PROJECT_FILES = ("config.yaml", "handlers/example.py", "tests/test_example.py")
SCHEMA_FILE = "wsgate.schema.json"


def _template(name: str) -> Traversable:
    node = resources.files("wsgate") / "project"
    for part in name.split("/"):
        node = node / part
    return node


def init_project(directory: Path, registry: Registry) -> list[Path]:
    """Write the project files into ``directory``; return them.

    Nothing is written if any of them exists already: FileExistsError names them all.
    """
    targets = [directory / name for name in (*PROJECT_FILES, SCHEMA_FILE)]
    existing = [str(path) for path in targets if path.exists()]
    if existing:
        raise FileExistsError(", ".join(existing))
    schema = json.dumps(config_schema(registry), indent=2) + "\n"
    for name, target in zip((*PROJECT_FILES, SCHEMA_FILE), targets, strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        text = schema if name == SCHEMA_FILE else _template(name).read_text(encoding="utf-8")
        target.write_text(text, encoding="utf-8")
    return targets
