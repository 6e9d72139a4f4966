"""One interface over the three kinds of authenticator, built from config."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from ..config.auth import Authenticator
from .backend import HttpBackend
from .hook import PythonHook
from .identity import AuthFailure, Handshake, Identity
from .jwt import JwtVerifier

__all__ = ["AuthenticatorImpl", "build_authenticator"]


class AuthenticatorImpl:
    """What the handshake router calls: ``authenticate`` per handshake, ``close`` at shutdown.

    ``cookie`` names the cookie to take the token from (None: not from a cookie); the
    router extracts the token before calling ``authenticate``. A ``jwt:`` authenticator
    refuses a handshake without a token before anything else; ``http:`` and ``python:``
    are asked even then (they may go by a session cookie or the address).
    """

    def __init__(self, name: str, cookie: str | None, check: Callable[[Handshake], Awaitable[Identity]],
                 close: Callable[[], Awaitable[None]], *, needs_token: bool) -> None:
        self.name = name
        self.cookie = cookie
        self._check = check
        self._close = close
        self._needs_token = needs_token

    async def authenticate(self, handshake: Handshake) -> Identity:
        """The identity behind ``handshake``; AuthFailure to refuse it."""
        if self._needs_token and not handshake.token:
            raise AuthFailure(401, "missing", "no token in the request")
        return await self._check(handshake)

    async def close(self) -> None:
        """Release sessions; the authenticator is not used afterwards."""
        await self._close()


def build_authenticator(name: str, config: Authenticator, base: Path) -> AuthenticatorImpl:
    """The authenticator ``config`` describes; ``base`` is the folder of config.yaml.

    Raises ValueError with a user-facing message when a key file cannot be read or a
    hook cannot be imported. Opens no connection: sessions are created on first use.
    """
    if config.jwt is not None:
        verifier = JwtVerifier(config.jwt, base)

        async def verify(handshake: Handshake) -> Identity:
            assert handshake.token is not None  # needs_token
            return await verifier.verify(handshake.token)

        return AuthenticatorImpl(name, config.cookie, verify, verifier.close, needs_token=True)
    if config.http is not None:
        backend = HttpBackend(config.http)
        return AuthenticatorImpl(name, config.cookie, backend.check, backend.close, needs_token=False)
    if config.python is not None:
        hook = PythonHook(config.python, base)
        return AuthenticatorImpl(name, config.cookie, hook.check, hook.close, needs_token=False)
    # Authenticator's validator guarantees one of the three.
    raise AssertionError(f"authenticator {name!r} has no type")
