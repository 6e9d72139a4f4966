"""The one exception tree of wsgate.

::

    WsgateError
    ├── ConfigError          config.yaml is invalid (carries every problem found)
    ├── HandlerLoadError     a handler name or ``module:Class`` cannot be resolved
    ├── BrokerError          the broker could not be reached or refused an operation
    ├── DependencyError      an installed library is not one wsgate can run on
    ├── ConnectionClosed     a send on a connection that is already closed
    ├── Refuse               raised by a handler's ``authorize`` or an auth hook: turn a handshake away
    └── TokenRejected        ``Context.authenticate`` refused a token
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BrokerError",
    "ConfigError",
    "ConfigProblem",
    "ConnectionClosed",
    "DependencyError",
    "HandlerLoadError",
    "Refuse",
    "TokenRejected",
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


class DependencyError(WsgateError):
    """An installed library is not one wsgate can run on; the message says what to install."""


class HandlerLoadError(WsgateError):
    """A handler reference could not be turned into a Handler class."""


class BrokerError(WsgateError):
    """The message broker failed; local delivery is unaffected."""


class ConnectionClosed(WsgateError):
    """Raised by ``Connection.send`` when the connection is already closed."""


class Refuse(WsgateError):
    """Raised by a handler's ``authorize`` or a python auth hook to turn a client away.

    ``status`` is the HTTP status of the refusal (a 4xx); ``reason`` is a short text
    that may reach the client, so it must not carry secrets.
    """

    def __init__(self, status: int = 403, reason: str = "forbidden") -> None:
        # A 5xx would blame the gateway for a decision the application made.
        if not 400 <= status <= 499:
            raise ValueError(f"Refuse status must be a 4xx HTTP status, got {status!r}")
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}")


class TokenRejected(WsgateError):
    """``Context.authenticate`` refused a token.

    ``reason`` is one of "missing", "invalid", "expired", "forbidden" (valid, but the
    authenticator's rules refuse it) and "backend_error" (the authenticator could not
    decide); ``detail`` says what was wrong, never with the token in it.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")
