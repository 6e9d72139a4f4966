"""Verifying JSON Web Tokens locally, with joserfc.

The accepted algorithms come from config only, never from the token, and a verifier
holds either a shared secret or public keys, never both, so neither ``alg: none`` nor
an HS256 token signed with the public key can pass. A public key serves an algorithm
only if its type (and curve) fits it, checked here on the cryptography key itself.

joserfc checks the signature and the header: its registry allow-lists the algorithms,
bounds the segments' sizes and checks the header's registered members, its algorithm
models verify, and its ``check_key`` matches each key to its algorithms (once, when the
key is loaded). The compact serialization is split here rather than by
``jws.extract_compact`` and ``validate_compact``, whose layers (the payload decoded
before the signature is checked, the header copied and checked again, the key guessed
and checked per call) cost a fresh HS256 token more than the HMAC and JSON together;
base64url is decoded as strictly as joserfc decodes it (:mod:`.b64url`), and the
header of a token whose signature held is remembered by its segment. The claims are checked here: ``aud``,
``iss``, the types of ``sub`` and ``jti``, and the time claims (``exp``, ``nbf``,
``iat``) against ``now`` when given, so that expiry is testable and a handshake's
verdict does not depend on when it happened to be decoded. (joserfc rather than PyJWT:
PyJWT's decode checks every base64 character in a Python loop and re-checks the key at
every call, which made a fresh token's HS256 check 1.7 times as costly; see
``bench/jwt_libs.py`` and bench/README.md.)

Verified tokens are remembered (the last ``VERIFIED_CACHE`` of them, as Envoy's
``jwt_cache_config`` does): a client that reconnects, or opens several sockets, with
the same token skips the signature check. The time claims are still checked on every
use, and a JWKS refetch forgets them all, so a key removed by the issuer stops
admitting its tokens.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import aiohttp
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key
from joserfc import jws
from joserfc.errors import DecodeError, JoseError
from joserfc.jwa import EdDSAAlgorithm, JWSAlgModel
from joserfc.jwk import ECKey, JWKRegistry, Key, OctKey, OKPKey, RSAKey

from ..config.auth import JwtConfig
from .b64url import b64url_decode
from .identity import AuthFailure, Identity, display_url, redact
from .times import is_number, unix_time

__all__ = ["JwtVerifier"]

MIN_REFETCH_INTERVAL = 30.0
FIRST_RETRY = 1.0  # seconds after a failed JWKS fetch; doubles per failure up to min_refetch_interval
FETCH_TIMEOUT = 5.0
MAX_JWKS_BYTES = 1 << 20
VERIFIED_CACHE = 4096  # tokens; a few MiB at most
HEADER_CACHE = 64  # distinct signed token headers whose checks are remembered

_KeyId = str | None

# Looks like a PEM or an SSH public key: as an HMAC secret, the algorithm-confusion attack.
_KEY_LOOKALIKES = (b"-----BEGIN ", b"ssh-rsa", b"ssh-dss", b"ssh-ed25519", b"ecdsa-sha2-", b"-cert-v01@openssh.com")
_EC_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1}

class _EdDSA(EdDSAAlgorithm):
    # RFC 9864 deprecates the name "EdDSA" because it leaves the curve to the key; here
    # the key's type is checked (Ed25519 or Ed448, see _fits), and the warning joserfc
    # gives for such a token would tell an operator nothing to act on.
    security_warning = None  # type: ignore[assignment]  # JWSAlgModel declares str | None


class _Registry(jws.JWSRegistry):
    """joserfc's JWS registry with larger size limits and a quiet EdDSA.

    joserfc's default limits (a 512-byte header, a 1,024-byte signature) would refuse a
    header with a certificate chain or an RS512 signature from an 8,192-bit key; the
    handshake's own header limit (8 KiB) bounds a token anyway.
    """

    algorithms = {**jws.JWSRegistry.algorithms, "EdDSA": _EdDSA()}
    max_header_length = 8192
    max_signature_length = 2048


class _Times(NamedTuple):
    """A token's time claims in unix seconds (None: absent), read once per token."""

    exp: float | None
    nbf: float | None
    iat: float | None


def _fits(alg: str, key: object) -> bool:
    """Whether the public key ``key`` (a cryptography object) can verify ``alg``."""
    if alg.startswith("RS"):
        return isinstance(key, rsa.RSAPublicKey)
    if alg in _EC_CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _EC_CURVES[alg])
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


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
        self._registry = _Registry(algorithms=self._algorithms, strict_check_header=False)
        # Looked up once: get_alg applies the registry's allow-list (and would warn per call).
        self._alg_models: dict[str, JWSAlgModel] = {alg: self._registry.get_alg(alg) for alg in self._algorithms}
        self._key: Key | None = None
        if config.secret is not None:
            self._key = self._hmac_key(config.secret.get_secret_value())
        elif config.public_key is not None:
            self._key = self._pem_key(base / Path(config.public_key).expanduser())
        if self._key is not None:
            for model in self._alg_models.values():
                # joserfc's own key-to-algorithm check (use, key type, the key's alg),
                # once here for the key's life rather than per token.
                model.check_key(self._key)
        self._jwks_url = config.jwks_url
        self._session = session
        self._owns_session = session is None
        self._min_refetch_interval = min_refetch_interval
        self._fetch_timeout = fetch_timeout
        self._clock = clock
        self._jwks: dict[tuple[_KeyId, str], Key] = {}
        self._kids: set[_KeyId] = set()
        self._fetched_at: float | None = None
        self._last_unknown_kid_refetch: float | None = None
        self._lock = asyncio.Lock()
        self._headers: dict[bytes, dict[str, Any]] = {}  # header segment -> the header, checked
        self._verified: OrderedDict[str, tuple[Identity, _Times]] = OrderedDict()  # token -> what it vouched for
        self._completed = 0
        self._last_error: AuthFailure | None = None
        self._failures = 0  # failed fetches in a row
        self._retry_at: float | None = None  # no fetch before this clock() time

    def _hmac_key(self, secret: str) -> Key:
        key = secret.encode()
        try:
            if any(marker in key for marker in _KEY_LOOKALIKES):
                raise ValueError(key)
            # joserfc refuses anything that parses as a public key or certificate.
            return OctKey.import_key(key)
        except ValueError:
            # The algorithm-confusion guard: a public key is no shared secret.
            raise ValueError(
                f"secret for {', '.join(self._algorithms)} looks like a PEM key or certificate; HS algorithms "
                "need a shared secret string (for a public key use public_key and RS/ES/EdDSA)"
            ) from None

    def _pem_key(self, path: Path) -> Key:
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
            if not _fits(alg, key):
                raise ValueError(
                    f"public_key: {str(path)!r} holds a {type(key).__name__.removeprefix('_')} "
                    f"that cannot verify {alg}"
                )
        # Imported from the public half alone, whatever else the file held.
        pem = key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        jose_class: type[RSAKey | ECKey | OKPKey] = (
            RSAKey if isinstance(key, rsa.RSAPublicKey) else ECKey if isinstance(key, ec.EllipticCurvePublicKey)
            else OKPKey
        )
        return jose_class.import_key(pem)

    async def verify(self, token: str, now: float | None = None) -> Identity:
        """The identity ``token`` vouches for; AuthFailure(401, "invalid" or "expired") otherwise.

        ``now`` is unix seconds (default: the wall clock). A JWKS that cannot be
        fetched gives AuthFailure(503, "backend_error").
        """
        if now is None:
            now = time.time()
        remembered = self._verified.get(token)
        if remembered is not None and (self._jwks_url is None or not self._jwks_expired()):
            self._verified.move_to_end(token)
            identity, times = remembered
            self._check_times(times, now)
            return identity
        header, signing_input, payload_segment, signature_segment = self._parse(token)
        header_segment = signing_input[: -len(payload_segment) - 1]
        alg = header["alg"]
        if self._jwks_url is None:
            assert self._key is not None
            key = self._key
        else:
            key = await self._jwks_key(header.get("kid"), alg, token)
        self._check_signature(alg, signing_input, signature_segment, key, token)
        if header_segment not in self._headers:
            # Only a header the key signed: junk tokens cannot crowd out the issuer's.
            if len(self._headers) >= HEADER_CACHE:
                self._headers.clear()
            self._headers[header_segment] = header
        try:
            claims = json.loads(b64url_decode(payload_segment).decode())
        except binascii.Error:
            raise AuthFailure(401, "invalid", "malformed token: Invalid payload") from None
        except (ValueError, RecursionError):
            raise AuthFailure(401, "invalid", "token payload is not JSON") from None
        if not isinstance(claims, dict):
            raise AuthFailure(401, "invalid", "token payload is not a JSON object")
        self._check_claims(claims, token)
        times = _Times(_claim_time(claims, "exp") if "exp" in claims else None,
                       _claim_time(claims, "nbf") if "nbf" in claims else None,
                       _claim_time(claims, "iat") if "iat" in claims else None)
        self._check_times(times, now)
        exp = times.exp
        # One Identity per token, shared by every connection that presents it: frozen,
        # and its claims read-only.
        identity = Identity(user=self._user(claims), claims=MappingProxyType(claims),
                            expires_at=None if exp is None else exp + self._config.leeway)
        self._verified[token] = (identity, times)
        if len(self._verified) > VERIFIED_CACHE:
            self._verified.popitem(last=False)
        return identity

    def _parse(self, token: str) -> tuple[dict[str, Any], bytes, bytes, bytes]:
        """The token's header and its segments (signing input, payload, signature), if it
        is well formed and its header passes (see ``_header``); else AuthFailure.

        The compact serialization is split as joserfc's ``extract_compact`` splits it
        (its registry's size limits, strict base64url), without decoding the payload
        before the signature is checked.
        """
        registry = self._registry
        try:
            value = token.encode()
            registry.validate_compact_value_size(value)
            parts = value.split(b".")
            if len(parts) != 3:
                raise DecodeError("Invalid JSON Web Signature")
            header_segment, payload_segment, signature_segment = parts
            registry.validate_header_size(header_segment)
            registry.validate_signature_size(signature_segment)
            registry.validate_payload_size(payload_segment)
        except (JoseError, ValueError) as exc:  # ValueError: a str that encodes to no bytes (a lone surrogate)
            description = exc.description if isinstance(exc, JoseError) else type(exc).__name__
            raise AuthFailure(401, "invalid", f"malformed token: {redact(description, token)}") from None
        header = self._headers.get(header_segment)
        if header is None:
            header = self._header(header_segment, token)
        return header, value[: len(header_segment) + 1 + len(payload_segment)], payload_segment, signature_segment

    def _header(self, segment: bytes, token: str) -> dict[str, Any]:
        """The header ``segment`` decoded, if it names one of our algorithms and passes
        joserfc's checks of the registered header members and ours; else AuthFailure.

        A pure function of the segment, so the header of a token whose signature held
        is remembered (``HEADER_CACHE`` of them): an issuer's tokens mostly share one.
        """
        try:
            header = json.loads(b64url_decode(segment).decode())
        except (binascii.Error, ValueError, RecursionError):
            header = None
        if not isinstance(header, dict) or "alg" not in header:
            raise AuthFailure(401, "invalid", "malformed token: Invalid header")
        alg = header["alg"]
        if alg not in self._algorithms:
            raise AuthFailure(
                401, "invalid",
                f"token algorithm {_show(alg, token)} is not one of {', '.join(self._algorithms)}",
            )
        if "kid" in header and not isinstance(header["kid"], str):
            raise AuthFailure(401, "invalid", "malformed token: its 'kid' header is not a string")
        if "crit" in header or "b64" in header:
            # No critical extension is implemented here, so none may be required;
            # b64 (RFC 7797, an unencoded payload) is not for JWTs.
            raise AuthFailure(401, "invalid", "token header has 'crit' or 'b64', which no JWT needs")
        try:
            self._registry.check_header(header)  # the types of jku, x5c, typ, ... (as validate_compact does)
        except JoseError as exc:
            raise AuthFailure(401, "invalid", redact(f"{type(exc).__name__}: {exc.description}", token)) from None
        return header

    def _check_signature(self, alg: str, signing_input: bytes, signature_segment: bytes, key: Key,
                         token: str) -> None:
        """AuthFailure unless ``key`` signed ``signing_input`` under ``alg``.

        The signature is checked by joserfc's algorithm model, as ``jws.validate_compact``
        checks it; the header was checked by ``_header``, and the key's fitness for
        the algorithm (joserfc's ``check_key``) once, when the key was loaded.
        """
        detail: str | None = None
        try:
            signature = b64url_decode(signature_segment)
        except binascii.Error:
            detail = "Signature verification failed"
        else:
            try:
                if not self._alg_models[alg].verify(signing_input, signature, key):
                    detail = "Signature verification failed"
            except JoseError as exc:
                detail = redact(f"{type(exc).__name__}: {exc.description}", token)
        if detail is not None:
            raise AuthFailure(401, "invalid", detail)

    def _check_claims(self, claims: Mapping[str, Any], token: str) -> None:
        """aud and iss when configured, and sub and jti as RFC 7519 types them."""
        audience = self._config.audience
        if audience is not None:
            if "aud" not in claims:
                raise AuthFailure(401, "invalid", f"token has no 'aud' claim (audience {audience!r} required)")
            aud = claims["aud"]
            if isinstance(aud, str):
                aud = [aud]
            if not isinstance(aud, list) or not all(isinstance(item, str) for item in aud):
                raise AuthFailure(401, "invalid", "claim 'aud' is not a string or a list of strings")
            if audience not in aud:
                raise AuthFailure(401, "invalid", f"token audience {_show(claims['aud'], token)} is not {audience!r}")
        issuer = self._config.issuer
        if issuer is not None:
            if "iss" not in claims:
                raise AuthFailure(401, "invalid", f"token has no 'iss' claim (issuer {issuer!r} required)")
            if claims["iss"] != issuer:
                raise AuthFailure(401, "invalid", f"token issuer {_show(claims['iss'], token)} is not {issuer!r}")
        for name in ("sub", "jti"):
            if name in claims and not isinstance(claims[name], str):
                raise AuthFailure(401, "invalid", f"claim {name!r} is not a string")

    def _check_times(self, times: _Times, now: float) -> None:
        leeway = self._config.leeway
        exp, nbf, iat = times
        # As RFC 7519 (and PyJWT): exp is exclusive, nbf and iat inclusive.
        if exp is not None and exp <= now - leeway:
            raise AuthFailure(401, "expired", f"token expired {now - exp:.0f}s ago")
        if nbf is not None and nbf > now + leeway:
            raise AuthFailure(401, "invalid", f"token not valid for another {nbf - now:.0f}s (nbf)")
        if iat is not None and iat > now + leeway:
            raise AuthFailure(401, "invalid", f"token issued {iat - now:.0f}s in the future (iat)")

    def _user(self, claims: Mapping[str, Any]) -> str:
        name = self._config.user_claim
        if name not in claims:
            raise AuthFailure(401, "invalid", f"token has no {name!r} claim")
        value = claims[name]
        if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
            raise AuthFailure(401, "invalid", f"claim {name!r} is not a non-empty string")
        return str(value)

    # --- JWKS -------------------------------------------------------------------------

    async def _jwks_key(self, kid: object, alg: str, token: str) -> Key:
        # _parse has already refused a kid header that is not a string.
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

    def _lookup(self, kid: _KeyId, alg: str) -> Key | None:
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

    def _parse_jwks(self, body: bytes) -> dict[tuple[_KeyId, str], Key]:
        where = display_url(self._jwks_url or "")
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise AuthFailure(503, "backend_error", f"JWKS {where} is not JSON") from None
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise AuthFailure(503, "backend_error", f"JWKS {where} is not a JWK set (no 'keys' list)")
        keys: dict[tuple[_KeyId, str], Key] = {}
        for raw in document["keys"]:
            # Encryption keys and leaked private keys are not for verifying signatures.
            # No shared secrets either: HS algorithms never come with a jwks_url.
            if not isinstance(raw, dict) or raw.get("use", "sig") != "sig" or "d" in raw or raw.get("kty") == "oct":
                continue
            try:
                key = JWKRegistry.import_key(raw)
                native = key.public_key  # built now: a key that cannot be is skipped here, not per token
                key.check_key_op("verify")
            except (JoseError, ValueError, TypeError, KeyError, UnsupportedAlgorithm):
                continue
            kid = raw.get("kid") if isinstance(raw.get("kid"), str) else None
            declared = raw.get("alg")
            for alg in self._algorithms:
                # Many issuers omit "alg"; the key then serves every configured
                # algorithm its type fits, which is why keys are indexed per algorithm.
                if (declared is None or declared == alg) and _fits(alg, native):
                    try:
                        self._alg_models[alg].check_key(key)  # once per fetch, not per token
                    except JoseError:
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
