"""The ``auth:`` section of config.yaml as pydantic models.

::

    auth:
      users:                      # an authenticator name, used by endpoints
        jwt:
          algorithms: [RS256]
          jwks_url: https://idp.example.com/.well-known/jwks.json
          audience: chat
        cookie: session           # also look for the token in this cookie

An authenticator is exactly one of ``jwt``, ``http`` (ask a backend) or ``python``
(call ``module.path:function``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, model_validator

from ..observe.redact import redact_url
from .base import Duration, StrictModel

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "Algorithm",
    "Allow",
    "AuthSection",
    "Authenticator",
    "HttpBackendConfig",
    "JwtConfig",
    "PythonHookConfig",
    "claim_text",
]

Algorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"]
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"})

# kebab-case or snake_case, as YAML users write keys. Not '.', which would make dotted
# keys such as ``auth.NAME.jwt`` ambiguous, nor spaces or other punctuation, since the
# name is quoted bare in log lines and in ``wsgate routes``; not '-' first (reads as an option).
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_REF = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
# RFC 6265 cookie-name: an RFC 7230 token.
_COOKIE_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _check_http_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{redact_url(url)!r} is not an http(s) URL, e.g. 'https://auth.example.com/check'")
    return url


HttpUrl = Annotated[str, AfterValidator(_check_http_url)]


def _algorithm_list(value: object) -> object:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and any(isinstance(v, str) and v.lower() == "none" for v in value):
        raise ValueError(
            "'none' means unsigned tokens that anyone can forge; it is never accepted. "
            "List the algorithms your issuer signs with, e.g. [RS256]"
        )
    return value


class JwtConfig(StrictModel):
    """Verify a JWT locally: with a shared ``secret`` (HS*), a PEM ``public_key`` or a ``jwks_url``."""

    algorithms: Annotated[list[Algorithm], BeforeValidator(_algorithm_list), Field(min_length=1)]
    # SecretStr: the secret must never show up in a repr, a log line or a config dump.
    secret: SecretStr | None = None
    public_key: str | None = None
    jwks_url: HttpUrl | None = None
    jwks_cache: Duration = Field(default=600.0, gt=0)
    audience: str | None = None
    issuer: str | None = None
    leeway: Duration = 0.0
    user_claim: str = Field(default="sub", min_length=1)

    @model_validator(mode="after")
    def _keys_fit_algorithms(self) -> JwtConfig:
        hmac = sorted(a for a in self.algorithms if a in HMAC_ALGORITHMS)
        asym = sorted(a for a in self.algorithms if a in ASYMMETRIC_ALGORITHMS)
        if hmac and asym:
            # With both, a token signed HS256 using the public key as the shared
            # secret could pass: the classic algorithm-confusion attack.
            raise ValueError(
                f"algorithms mixes shared-secret ({', '.join(hmac)}) and public-key ({', '.join(asym)}) "
                "algorithms; define two authenticators, one for each"
            )
        if hmac:
            if self.secret is None or not self.secret.get_secret_value():
                raise ValueError(f"{', '.join(hmac)} needs a secret")
            if self.public_key is not None or self.jwks_url is not None:
                raise ValueError(f"{', '.join(hmac)} verifies with the secret; remove public_key and jwks_url")
        else:
            if self.public_key is None and self.jwks_url is None:
                raise ValueError(f"{', '.join(asym)} needs a public_key (a PEM file) or a jwks_url")
            if self.public_key is not None and self.jwks_url is not None:
                raise ValueError("give public_key or jwks_url, not both")
            if self.secret is not None:
                raise ValueError(f"{', '.join(asym)} verifies with a public key; remove secret")
        return self


class HttpBackendConfig(StrictModel):
    """Ask an HTTP service: wsgate POSTs the handshake, the service answers with the user."""

    url: HttpUrl
    timeout: Duration = Field(default=2.0, gt=0)


def _check_ref(value: str) -> str:
    if not _REF.match(value):
        raise ValueError(f"{value!r} is not a function reference: write 'module.path:function', e.g. 'auth:check'")
    return value


PythonHookConfig = Annotated[str, AfterValidator(_check_ref)]


def _check_cookie_name(value: str) -> str:
    if not _COOKIE_NAME.match(value):
        raise ValueError(f"{value!r} is not a cookie name")
    return value


class Authenticator(StrictModel):
    """One named authenticator: exactly one of ``jwt``, ``http``, ``python``."""

    jwt: JwtConfig | None = None
    http: HttpBackendConfig | None = None
    python: PythonHookConfig | None = None
    cookie: Annotated[str, AfterValidator(_check_cookie_name)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Authenticator:
        if sum(x is not None for x in (self.jwt, self.http, self.python)) != 1:
            raise ValueError("an authenticator needs exactly one of jwt, http, python")
        return self


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an authenticator name: use ASCII letters, digits, '_' and '-' (not first), "
            "e.g. 'users' or 'staff-tokens'; a '.' would make keys such as auth.NAME.jwt ambiguous"
        )
    return value


AuthSection = dict[Annotated[str, AfterValidator(_check_name)], Authenticator]


def claim_text(value: object) -> str:
    """How a scalar claim or rule value compares: JSON spelling for booleans and null.

    YAML ``admin: true`` and a JSON claim ``true`` must meet as ``"true"``, where
    ``str()`` would say ``"True"``.
    """
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    return str(value)


def _allow_lists(value: object) -> object:
    if not isinstance(value, dict):
        return value
    rules: dict[Any, Any] = {}
    for key, accepted in value.items():
        items = accepted if isinstance(accepted, list) else [accepted]
        if not items:
            raise ValueError(f"{key}: an empty list admits nobody; give at least one value")
        if not all(item is None or isinstance(item, str | int | float | bool) for item in items):
            raise ValueError(f"{key}: expected a value or a list of values")
        rules[key] = [claim_text(item) for item in items]
    return rules


Allow = Annotated[dict[str, list[str]], BeforeValidator(_allow_lists)]

