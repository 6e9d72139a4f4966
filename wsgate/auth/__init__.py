"""Authentication of WebSocket handshakes: JWT, an HTTP backend, or a python hook.

The pieces, from the outside in: :mod:`.models` is the ``auth:`` config section,
:func:`build_authenticator` turns one entry into an :class:`AuthenticatorImpl`,
:func:`split_offer` and :func:`extract_token` find the token in a request, the
authenticator's ``authenticate`` turns a :class:`Handshake` into an :class:`Identity`
or raises ``wsgate.auth.identity.AuthFailure`` (internal, hence not exported), and
:func:`allowed` checks claims against ``allow:``.
"""

from __future__ import annotations

from ..config.auth import Allow, Authenticator, AuthSection, HttpBackendConfig, JwtConfig, PythonHookConfig
from .allow import allowed
from .authenticator import AuthenticatorImpl, build_authenticator
from .backend import HttpBackend
from .hook import PythonHook
from .identity import Handshake, Identity, Refuse
from .jwt import JwtVerifier
from .tokens import AUTH_PROTOCOL, BEARER_PROTOCOL_PREFIX, extract_token, split_offer

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
