"""What a validated config names outside itself, made real before anything binds.

``wsgate.config`` is the schema: it reads the text and nothing else. The authenticators
(their key files read, their hooks imported) are built here from ``Settings`` and held
by the app's gateway; the TLS certificate and key are loaded here too, so that a broken
pair fails ``check``, ``serve`` and a reload alike. Each failure is a config problem
located at the key that names the file or the module, reported as a typo would be.
"""

from __future__ import annotations

from .auth.authenticator import AuthenticatorImpl, build_authenticator
from .config.models import Settings
from .errors import ConfigError, ConfigProblem
from .tls import TlsError, server_ssl_context

__all__ = ["prepare"]


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


def prepare(settings: Settings) -> dict[str, AuthenticatorImpl]:
    """Every authenticator of ``auth:``, by name, once the TLS pair is known to load.

    Raises ConfigError listing every problem. Opens no connection: an authenticator's
    HTTP session starts on first use and ends with its ``close()``. The TLS context is
    not kept: ``serve`` builds its own for the socket.
    """
    problems: list[ConfigProblem] = []
    built = _authenticators(settings, problems)
    _check_tls(settings, problems)
    if problems:
        raise ConfigError(problems)
    return built
