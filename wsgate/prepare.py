"""What a validated config names outside itself, made real before anything binds.

``wsgate.config`` is the schema: it reads the text and nothing else. The authenticators
(their key files read, their hooks imported) and the TLS context (the certificate and
key loaded) are built here, from ``Settings``, and held by the app that uses them. Each
failure is a config problem located at the key that names the file or the module, so
``check`` and ``serve`` report it as they report a typo.
"""

from __future__ import annotations

from .auth.authenticator import AuthenticatorImpl, build_authenticator
from .config.models import Settings
from .errors import ConfigError, ConfigProblem
from .tls import TlsError, server_ssl_context

__all__ = ["build_authenticators", "check_prepared"]


def _authenticators(settings: Settings, problems: list[ConfigProblem]) -> dict[str, AuthenticatorImpl]:
    built = {}
    for name, spec in settings.config.auth.items():
        kind = "jwt" if spec.jwt else "http" if spec.http else "python"
        try:
            built[name] = build_authenticator(name, spec, settings.folder)
        except ValueError as exc:
            problems.append(settings.source.problem(("auth", name, kind), str(exc)))
    return built


def _check_tls(settings: Settings, problems: list[ConfigProblem]) -> None:
    tls = settings.config.server.tls
    if tls is None:
        return
    try:
        server_ssl_context(tls, settings.folder)
    except TlsError as exc:
        problems += [settings.source.problem(("server", "tls", key), message) for key, message in exc.problems]


def build_authenticators(settings: Settings) -> dict[str, AuthenticatorImpl]:
    """Every authenticator of ``auth:`` by name; ConfigError if a key file or hook is unusable.

    Opens no connection: their HTTP sessions start on first use and end with ``close()``.
    """
    problems: list[ConfigProblem] = []
    built = _authenticators(settings, problems)
    if problems:
        raise ConfigError(problems)
    return built


def check_prepared(settings: Settings) -> None:
    """Build the authenticators and the TLS context, and drop them: ConfigError listing every problem.

    What ``check`` and ``serve`` run before binding; ``serve`` builds the TLS context
    again for its socket, and the app its authenticators.
    """
    problems: list[ConfigProblem] = []
    _authenticators(settings, problems)
    _check_tls(settings, problems)
    if problems:
        raise ConfigError(problems)
