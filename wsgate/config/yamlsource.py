"""YAML loading that remembers where every key was written, for error messages."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import ConfigError, ConfigProblem

__all__ = ["Located", "dotted", "load_yaml"]

Path = tuple[str | int, ...]


def dotted(loc: Sequence[str | int]) -> str:
    """``('endpoints', 1, 'options', 'history')`` -> ``endpoints[1].options.history``.

    A key that is not a plain name (empty, or with a dot or space) is quoted: ``namespaces[""]``.
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part or not part.replace("_", "a").replace("-", "a").isalnum():
            out += f"[{json.dumps(part)}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass
class Located:
    """A parsed YAML document plus the line and column of every key and item."""

    file: str
    data: Any
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def where(self, loc: Sequence[str | int]) -> tuple[int, int]:
        """Position of ``loc``, or of its nearest written ancestor."""
        path = tuple(loc)
        while path not in self.positions and path:
            path = path[:-1]
        return self.positions.get(path, (1, 1))

    def problem(self, loc: Sequence[str | int], message: str) -> ConfigProblem:
        line, column = self.where(loc)
        return ConfigProblem(self.file, line, column, dotted(loc), message)


def _walk(node: yaml.Node, path: Path, out: Located, problems: list[ConfigProblem]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            child = (*path, key)
            mark = key_node.start_mark
            if key in seen:
                problems.append(
                    ConfigProblem(out.file, mark.line + 1, mark.column + 1, dotted(child),
                                  "this key appears twice in the same mapping; keep one")
                )
            seen.add(key)
            out.positions[child] = (mark.line + 1, mark.column + 1)
            _walk(value_node, child, out, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            mark = item.start_mark
            out.positions[(*path, index)] = (mark.line + 1, mark.column + 1)
            _walk(item, (*path, index), out, problems)


def _line_column(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of ``text[index]``; YAML also breaks lines at \\x85, \\u2028..."""
    lines = text[:index].splitlines(keepends=True)
    if not lines or lines[-1] != lines[-1].splitlines()[0]:  # empty, or ends with a line break
        return len(lines) + 1, 1
    return len(lines), len(lines[-1]) + 1


def load_yaml(text: str, file: str) -> Located:
    """Parse ``text``; raise ConfigError with file:line:col on syntax errors or duplicate keys."""
    def fail(line: int, column: int, message: str) -> ConfigError:
        return ConfigError([ConfigProblem(file, line, column, "", message)])

    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
        located = Located(file, data)
        problems: list[ConfigProblem] = []
        if node is not None:
            _walk(node, (), located, problems)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise fail(line, column, f"YAML syntax error: {exc.problem or exc}") from None
    except yaml.reader.ReaderError as exc:
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        raise fail(*_line_column(text, exc.position), f"YAML cannot hold the character {char!r}; remove it") from None
    except RecursionError:
        raise fail(1, 1, "the document is nested too deeply") from None
    except (ValueError, TypeError, IndexError, AttributeError, OverflowError) as exc:
        # A scalar the YAML tags cannot build, such as the date 2020-13-45 or "!!int x".
        raise fail(1, 1, f"YAML value error: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if problems:
        raise ConfigError(problems)
    return located
