"""Authentication of WebSocket handshakes: JWT, an HTTP backend, or a python hook.

The pieces, from the outside in: :mod:`.models` is the ``auth:`` config section,
:func:`build_authenticator` turns one entry into an :class:`AuthenticatorImpl`,
:func:`split_offer` and :func:`extract_token` find the token in a request, the
authenticator's ``authenticate`` turns a :class:`Handshake` into an :class:`Identity`
or raises ``wsgate.auth.identity.AuthFailure`` (internal, hence not exported), and
:func:`allowed` checks claims against ``allow:``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_attributes
from .identity import Handshake, Identity, Refuse

if TYPE_CHECKING:
    from ..config.auth import Allow, Authenticator, AuthSection, HttpBackendConfig, JwtConfig, PythonHookConfig
    from .allow import allowed
    from .authenticator import AuthenticatorImpl, build_authenticator
    from .backend import HttpBackend
    from .hook import PythonHook
    from .jwt import JwtVerifier
    from .tokens import AUTH_PROTOCOL, BEARER_PROTOCOL_PREFIX, extract_token, split_offer

# ``import wsgate`` runs this file for Handshake and Identity: the authenticators, and
# aiohttp's client, joserfc and cryptography behind them, load when first named.
_LAZY = {
    **dict.fromkeys(["Allow", "Authenticator", "AuthSection", "HttpBackendConfig", "JwtConfig", "PythonHookConfig"],
                    "..config.auth"),
    "allowed": ".allow",
    "AuthenticatorImpl": ".authenticator",
    "build_authenticator": ".authenticator",
    "HttpBackend": ".backend",
    "PythonHook": ".hook",
    "JwtVerifier": ".jwt",
    **dict.fromkeys(["AUTH_PROTOCOL", "BEARER_PROTOCOL_PREFIX", "extract_token", "split_offer"], ".tokens"),
}

__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "AUTH_PROTOCOL",
    "BEARER_PROTOCOL_PREFIX",
    "Allow",
    "AuthSection",
    "Authenticator",
    "AuthenticatorImpl",
    "Handshake",
    "HttpBackend",
    "HttpBackendConfig",
    "Identity",
    "JwtConfig",
    "JwtVerifier",
    "PythonHook",
    "PythonHookConfig",
    "Refuse",
    "allowed",
    "build_authenticator",
    "extract_token",
    "split_offer",
]
