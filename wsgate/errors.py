"""The one exception tree of wsgate.

::

    WsgateError
    ├── ConfigError          config.yaml is invalid (carries every problem found)
    ├── HandlerLoadError     a handler name or ``module:Class`` cannot be resolved
    ├── BrokerError          the broker could not be reached or refused an operation
    └── ConnectionClosed     a send on a connection that is already closed
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BrokerError",
    "ConfigError",
    "ConfigProblem",
    "ConnectionClosed",
    "HandlerLoadError",
    "WsgateError",
]


class WsgateError(Exception):
    """Root of every error wsgate raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file, located as precisely as we can."""

    file: str
    line: int
    column: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(WsgateError):
    """The configuration is invalid; ``problems`` lists every mistake found."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class HandlerLoadError(WsgateError):
    """A handler reference could not be turned into a Handler class."""


class BrokerError(WsgateError):
    """The message broker failed; local delivery is unaffected."""


class ConnectionClosed(WsgateError):
    """Raised by ``Connection.send`` when the connection is already closed."""
