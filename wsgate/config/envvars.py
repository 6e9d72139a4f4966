"""``${VAR}`` in config.yaml: any string value may take text from the environment.

``${VAR}`` may stand alone or inside a longer string (``redis://:${PASS}@host``);
``$${`` writes a literal ``${``. Keys are never expanded. An unset variable is a
config error at the value's line, so a deployment that forgot a secret fails to
start instead of running with an empty one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigProblem
from .yamlsource import Located

__all__ = ["expand_env"]

_REFERENCE = re.compile(r"\$(\$)|\$\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def expand_env(src: Located, environ: Mapping[str, str]) -> list[ConfigProblem]:
    """Replace ``${VAR}`` in every string value of ``src.data`` in place; return the problems."""
    problems: list[ConfigProblem] = []

    def expand(value: str, loc: tuple[str | int, ...]) -> str:
        def substitute(m: re.Match[str]) -> str:
            if m.group(1):
                return "$"
            name = m.group(2)
            if not _NAME.fullmatch(name):
                problems.append(src.problem(loc, f"${{{name}}} is not a variable name; "
                                                 "write $${ for a literal ${"))
            elif name not in environ:
                problems.append(src.problem(loc, f"environment variable {name} is not set; "
                                                 "set it, or write the value here"))
            else:
                return environ[name]
            return m.group(0)

        return _REFERENCE.sub(substitute, value) if "$" in value else value

    def walk(node: Any, loc: tuple[str | int, ...]) -> Any:
        if isinstance(node, str):
            return expand(node, loc)
        if isinstance(node, dict):
            return {key: walk(value, (*loc, key)) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item, (*loc, index)) for index, item in enumerate(node)]
        return node

    src.data = walk(src.data, ())
    return problems
