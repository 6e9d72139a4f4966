"""Verifying JSON Web Tokens locally, with PyJWT.

The accepted algorithms come from config only, never from the token, and a verifier
holds either a shared secret or public keys, never both, so neither ``alg: none`` nor
an HS256 token signed with the public key can pass.

Time claims (``exp``, ``nbf``, ``iat``) are checked here rather than by PyJWT, against
``now`` when given: PyJWT always reads the wall clock, which makes expiry untestable
and a handshake's verdict depend on when it happened to be decoded.

Verified tokens are remembered (the last ``VERIFIED_CACHE`` of them, as Envoy's
``jwt_cache_config`` does): a client that reconnects, or opens several sockets, with
the same token skips the signature check. The time claims are still checked on every
use, and a JWKS refetch forgets them all, so a key removed by the issuer stops
admitting its tokens.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import get_default_algorithms
from jwt.types import Options

from ..config.auth import HMAC_ALGORITHMS, JwtConfig
from .identity import AuthFailure, Identity, display_url, redact
from .times import is_number, unix_time

__all__ = ["JwtVerifier"]

MIN_REFETCH_INTERVAL = 30.0
FIRST_RETRY = 1.0  # seconds after a failed JWKS fetch; doubles per failure up to min_refetch_interval
FETCH_TIMEOUT = 5.0
MAX_JWKS_BYTES = 1 << 20
VERIFIED_CACHE = 4096  # tokens; a few MiB at most

_KeyId = str | None


def _claim_time(claims: Mapping[str, Any], name: str) -> float:
    """The time claim ``name`` in unix seconds; AuthFailure when it is not a number a float holds."""
    value = claims[name]
    seconds = unix_time(value)
    if seconds is not None:
        return seconds
    if is_number(value):
        raise AuthFailure(401, "invalid", f"claim {name!r} is too large for a time")
    raise AuthFailure(401, "invalid", f"claim {name!r} is not a number")


def _show(value: object, token: str) -> str:
    """A token-controlled value (``alg``, ``kid``) quoted and bounded for a log line."""
    text = repr(value)
    return redact(text if len(text) <= 60 else text[:57] + "...", token)


class JwtVerifier:
    """Checks a token's signature and claims against one ``jwt:`` config.

    ``base`` is the folder of config.yaml, against which ``public_key`` is resolved.
    The PEM key is read here, so a bad path fails at startup with a ``ValueError``.
    For a ``jwks_url`` the key set is fetched on first use and cached for
    ``jwks_cache`` seconds; a token naming an unknown ``kid`` triggers at most one
    early refetch per ``min_refetch_interval``, so junk tokens cannot hammer the
    issuer. After a failed fetch the next one waits ``FIRST_RETRY`` seconds, doubled
    per failure in a row up to ``min_refetch_interval``; until then every handshake
    gets the failure (503) without a request, whatever the traffic. ``clock``
    (monotonic seconds) drives those timers.
    """

    def __init__(
        self,
        config: JwtConfig,
        base: Path,
        *,
        session: aiohttp.ClientSession | None = None,
        min_refetch_interval: float = MIN_REFETCH_INTERVAL,
        fetch_timeout: float = FETCH_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._algorithms: list[str] = list(dict.fromkeys(config.algorithms))
        self._options: Options = {
            # No audience configured means the token's aud is not ours to judge.
            "verify_aud": config.audience is not None,
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
        }
        self._key: Any = None
        if config.secret is not None:
            self._key = self._hmac_key(config.secret.get_secret_value())
        elif config.public_key is not None:
            self._key = self._pem_key(base / Path(config.public_key).expanduser())
        self._jwks_url = config.jwks_url
        self._session = session
        self._owns_session = session is None
        self._min_refetch_interval = min_refetch_interval
        self._fetch_timeout = fetch_timeout
        self._clock = clock
        self._jwks: dict[tuple[_KeyId, str], jwt.PyJWK] = {}
        self._kids: set[_KeyId] = set()
        self._fetched_at: float | None = None
        self._last_unknown_kid_refetch: float | None = None
        self._lock = asyncio.Lock()
        self._verified: OrderedDict[str, dict[str, Any]] = OrderedDict()  # token -> its claims
        self._completed = 0
        self._last_error: AuthFailure | None = None
        self._failures = 0  # failed fetches in a row
        self._retry_at: float | None = None  # no fetch before this clock() time

    def _hmac_key(self, secret: str) -> bytes:
        key = secret.encode()
        for alg in self._algorithms:
            try:
                get_default_algorithms()[alg].prepare_key(key)
            except jwt.InvalidKeyError:
                # PyJWT refuses PEM-looking secrets: the algorithm-confusion guard.
                raise ValueError(
                    f"secret for {alg} looks like a PEM key or certificate; HS algorithms need a "
                    "shared secret string (for a public key use public_key and RS/ES/EdDSA)"
                ) from None
        return key

    def _pem_key(self, path: Path) -> Any:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"public_key: cannot read {str(path)!r}: {exc.strerror or exc}") from None
        try:
            key = load_pem_public_key(data)
        except (ValueError, TypeError):
            hint = " (it holds a private key; give the public key)" if b"PRIVATE KEY" in data else ""
            raise ValueError(f"public_key: {str(path)!r} is not a PEM public key{hint}") from None
        for alg in self._algorithms:
            try:
                get_default_algorithms()[alg].prepare_key(key)
            except (jwt.PyJWTError, TypeError, ValueError):
                raise ValueError(
                    f"public_key: {str(path)!r} holds a {type(key).__name__.removeprefix('_')} "
                    f"that cannot verify {alg}"
                ) from None
        return key

    async def verify(self, token: str, now: float | None = None) -> Identity:
        """The identity ``token`` vouches for; AuthFailure(401, "invalid" or "expired") otherwise.

        ``now`` is unix seconds (default: the wall clock). A JWKS that cannot be
        fetched gives AuthFailure(503, "backend_error").
        """
        remembered = self._verified.get(token)
        if remembered is not None and (self._jwks_url is None or not self._jwks_expired()):
            self._verified.move_to_end(token)
            return self._identity(remembered, time.time() if now is None else now)
        if self._jwks_url is None:
            key = self._key  # the header is read only to explain a failure: it costs a decode
        else:
            header = self._header(token)
            key = await self._jwks_key(header.get("kid"), str(header["alg"]), token)
        failure: AuthFailure | None = None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                options=self._options,
                audience=self._config.audience,
                issuer=self._config.issuer,
            )
        except jwt.PyJWTError as exc:
            failure = AuthFailure(401, "invalid", redact(f"{type(exc).__name__}: {exc}", token))
        if failure is not None:
            # Outside the except block: PyJWT's exception, which may quote the token,
            # must not ride along as the context.
            self._header(token)  # a malformed token or a foreign algorithm, said plainly
            raise failure
        identity = self._identity(claims, time.time() if now is None else now)
        self._verified[token] = claims
        if len(self._verified) > VERIFIED_CACHE:
            self._verified.popitem(last=False)
        return identity

    def _identity(self, claims: dict[str, Any], now: float) -> Identity:
        self._check_times(claims, now)
        return Identity(user=self._user(claims), claims=MappingProxyType(claims), expires_at=self._expires_at(claims))

    def _header(self, token: str) -> dict[str, Any]:
        """The token's header, if it is well formed and names one of our algorithms; else AuthFailure."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthFailure(401, "invalid", f"malformed token: {redact(str(exc), token)}") from None
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise AuthFailure(
                401, "invalid",
                f"token algorithm {_show(alg, token)} is not one of {', '.join(self._algorithms)}",
            )
        return header

    def _check_times(self, claims: Mapping[str, Any], now: float) -> None:
        leeway = self._config.leeway
        times = {name: _claim_time(claims, name) for name in ("exp", "nbf", "iat") if name in claims}
        # Same comparisons as PyJWT: exp is exclusive, nbf and iat inclusive.
        if (exp := times.get("exp")) is not None and exp <= now - leeway:
            raise AuthFailure(401, "expired", f"token expired {now - exp:.0f}s ago")
        if (nbf := times.get("nbf")) is not None and nbf > now + leeway:
            raise AuthFailure(401, "invalid", f"token not valid for another {nbf - now:.0f}s (nbf)")
        if (iat := times.get("iat")) is not None and iat > now + leeway:
            raise AuthFailure(401, "invalid", f"token issued {iat - now:.0f}s in the future (iat)")

    def _user(self, claims: Mapping[str, Any]) -> str:
        name = self._config.user_claim
        if name not in claims:
            raise AuthFailure(401, "invalid", f"token has no {name!r} claim")
        value = claims[name]
        if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
            raise AuthFailure(401, "invalid", f"claim {name!r} is not a non-empty string")
        return str(value)

    def _expires_at(self, claims: Mapping[str, Any]) -> float | None:
        exp = _claim_time(claims, "exp") if "exp" in claims else None
        return None if exp is None else exp + self._config.leeway

    # --- JWKS -------------------------------------------------------------------------

    async def _jwks_key(self, kid: object, alg: str, token: str) -> jwt.PyJWK:
        # PyJWT has already checked that a kid header, when present, is a string.
        kid = kid if isinstance(kid, str) else None
        seen = self._completed
        if self._jwks_expired():
            await self._refresh(seen)
            seen = self._completed
        key = self._lookup(kid, alg)
        if key is None and kid is not None and kid not in self._kids and (
            self._lock.locked() or self._may_refetch_for_unknown_kid()
        ):
            # Key rotation: the issuer may have published the key after our fetch.
            await self._refresh(seen)
            key = self._lookup(kid, alg)
        if key is not None:
            return key
        if kid is None:
            raise AuthFailure(
                401, "invalid", f"token has no 'kid' header and the key set has no single key for {alg}"
            )
        if kid in self._kids:
            raise AuthFailure(401, "invalid", f"key {_show(kid, token)} of the key set cannot verify {alg}")
        raise AuthFailure(401, "invalid", f"no key {_show(kid, token)} in the key set")

    def _jwks_expired(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._config.jwks_cache

    def _may_refetch_for_unknown_kid(self) -> bool:
        now = self._clock()
        last = self._last_unknown_kid_refetch
        if last is not None and now - last < self._min_refetch_interval:
            return False
        self._last_unknown_kid_refetch = now
        return True

    def _lookup(self, kid: _KeyId, alg: str) -> jwt.PyJWK | None:
        if kid is None and None not in self._kids and len(self._kids) == 1:
            # One key and a token that names none: the only sensible choice.
            kid = next(iter(self._kids))
        return self._jwks.get((kid, alg))

    async def _refresh(self, seen: int) -> None:
        """Fetch the key set unless a fetch finished since ``seen`` (a count of finished fetches)."""
        async with self._lock:
            if self._completed != seen:
                # Someone fetched while we waited: share their result, even a failure,
                # rather than queueing one more request to an issuer that just failed.
                if self._last_error is not None:
                    raise self._last_failure()
                return
            if self._retry_at is not None and self._clock() < self._retry_at:
                # The issuer failed a moment ago: without this wait, every junk token
                # (no valid signature needed) would be one more request to it.
                raise self._last_failure()
            try:
                keys = self._parse_jwks(await self._fetch())
            except AuthFailure as exc:
                self._last_error = exc
                self._failures += 1
                backoff = FIRST_RETRY * 2 ** min(self._failures - 1, 16)
                self._retry_at = self._clock() + min(backoff, self._min_refetch_interval)
                raise
            finally:
                # Counted once finished: a caller arriving mid-fetch must wait for
                # this fetch, not start the next one.
                self._completed += 1
            self._last_error = None
            self._failures = 0
            self._retry_at = None
            self._jwks = keys
            self._verified.clear()
            self._kids = {kid for kid, _ in keys}
            self._fetched_at = self._clock()

    def _last_failure(self) -> AuthFailure:
        """A fresh copy of the last fetch's failure (an exception carries its traceback)."""
        err = self._last_error
        assert err is not None
        return AuthFailure(err.status, err.reason, err.detail)

    async def _fetch(self) -> bytes:
        assert self._jwks_url is not None
        where = display_url(self._jwks_url)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.get(
                self._jwks_url, timeout=aiohttp.ClientTimeout(total=self._fetch_timeout)
            ) as response:
                if response.status != 200:
                    raise AuthFailure(503, "backend_error", f"JWKS {where} answered HTTP {response.status}")
                body = await response.content.read(MAX_JWKS_BYTES + 1)
        except TimeoutError:
            raise AuthFailure(
                503, "backend_error", f"JWKS {where} did not answer within {self._fetch_timeout:g}s"
            ) from None
        except aiohttp.ClientError as exc:
            raise AuthFailure(
                503, "backend_error", redact(f"JWKS {where}: {type(exc).__name__}: {exc}", None)
            ) from None
        if len(body) > MAX_JWKS_BYTES:
            raise AuthFailure(503, "backend_error", f"JWKS {where} is larger than {MAX_JWKS_BYTES} bytes")
        return body

    def _parse_jwks(self, body: bytes) -> dict[tuple[_KeyId, str], jwt.PyJWK]:
        where = display_url(self._jwks_url or "")
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise AuthFailure(503, "backend_error", f"JWKS {where} is not JSON") from None
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise AuthFailure(503, "backend_error", f"JWKS {where} is not a JWK set (no 'keys' list)")
        keys: dict[tuple[_KeyId, str], jwt.PyJWK] = {}
        for raw in document["keys"]:
            # Encryption keys and leaked private keys are not for verifying signatures.
            if not isinstance(raw, dict) or raw.get("use", "sig") != "sig" or "d" in raw:
                continue
            kid = raw.get("kid") if isinstance(raw.get("kid"), str) else None
            declared = raw.get("alg")
            for alg in self._algorithms:
                # Many issuers omit "alg"; the key then serves every configured
                # algorithm its type fits, which is why keys are indexed per algorithm.
                if (declared is not None and declared != alg) or alg in HMAC_ALGORITHMS:
                    continue
                try:
                    key = jwt.PyJWK.from_dict(raw, algorithm=alg)
                    key.Algorithm.prepare_key(key.key)
                except (jwt.PyJWTError, TypeError, ValueError):
                    continue
                keys.setdefault((kid, alg), key)
        if not keys:
            raise AuthFailure(
                503, "backend_error", f"JWKS {where} has no key usable for {', '.join(self._algorithms)}"
            )
        return keys

    async def close(self) -> None:
        """Close the HTTP session if this verifier created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
