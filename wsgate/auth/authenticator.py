"""One interface over the three kinds of authenticator, built from config."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from ..config.auth import Authenticator
from .backend import HttpBackend
from .hook import PythonHook
from .identity import AuthFailure, Handshake, Identity
from .jwt import JwtVerifier

__all__ = ["AuthenticatorImpl", "HookAuthenticator", "HttpAuthenticator", "JwtAuthenticator", "build_authenticator"]


@runtime_checkable
class AuthenticatorImpl(Protocol):
    """What the handshake router calls: ``authenticate`` per handshake, ``close`` at shutdown.

    ``cookie`` names the cookie to take the token from (None: not from a cookie);
    the router extracts the token before calling ``authenticate``.
    """

    name: str
    cookie: str | None

    async def authenticate(self, handshake: Handshake) -> Identity:
        """The identity behind ``handshake``; AuthFailure to refuse it."""
        ...

    async def close(self) -> None:
        """Release sessions; the authenticator is not used afterwards."""
        ...


class JwtAuthenticator:
    """``jwt:``: a handshake without a token is refused before anything else."""

    def __init__(self, name: str, verifier: JwtVerifier, cookie: str | None) -> None:
        self.name = name
        self.cookie = cookie
        self.verifier = verifier

    async def authenticate(self, handshake: Handshake) -> Identity:
        """Verify the handshake's token; AuthFailure(401, "missing") when there is none."""
        if not handshake.token:
            raise AuthFailure(401, "missing", "no token in the request")
        return await self.verifier.verify(handshake.token)

    async def close(self) -> None:
        """Close the JWKS session, if any."""
        await self.verifier.close()


class HttpAuthenticator:
    """``http:``: the backend is asked even without a token (it may go by cookie or address)."""

    def __init__(self, name: str, backend: HttpBackend, cookie: str | None) -> None:
        self.name = name
        self.cookie = cookie
        self.backend = backend

    async def authenticate(self, handshake: Handshake) -> Identity:
        """The backend's verdict."""
        return await self.backend.check(handshake)

    async def close(self) -> None:
        """Close the backend's session."""
        await self.backend.close()


class HookAuthenticator:
    """``python:``: the hook is called even without a token."""

    def __init__(self, name: str, hook: PythonHook, cookie: str | None) -> None:
        self.name = name
        self.cookie = cookie
        self.hook = hook

    async def authenticate(self, handshake: Handshake) -> Identity:
        """The hook's verdict."""
        return await self.hook.check(handshake)

    async def close(self) -> None:
        """Nothing to release."""
        await self.hook.close()


def build_authenticator(name: str, config: Authenticator, base: Path) -> AuthenticatorImpl:
    """The authenticator ``config`` describes; ``base`` is the folder of config.yaml.

    Raises ValueError with a user-facing message when a key file cannot be read or a
    hook cannot be imported. Opens no connection: sessions are created on first use.
    """
    if config.jwt is not None:
        return JwtAuthenticator(name, JwtVerifier(config.jwt, base), config.cookie)
    if config.http is not None:
        return HttpAuthenticator(name, HttpBackend(config.http), config.cookie)
    if config.python is not None:
        return HookAuthenticator(name, PythonHook(config.python, base), config.cookie)
    # Authenticator's validator guarantees one of the three.
    raise AssertionError(f"authenticator {name!r} has no type")
