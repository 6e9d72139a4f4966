"""How JwtVerifier reads a compact token: strict base64url, the header's checks and
their cache, one Identity per verified token. Free of I/O."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import joserfc.errors
import joserfc.jwa
import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.util import urlsafe_b64decode

from wsgate.auth.b64url import b64url_decode
from wsgate.auth.identity import AuthFailure, Identity
from wsgate.auth.jwt import HEADER_CACHE, JwtVerifier
from wsgate.config.auth import JwtConfig

NOW = 1_700_000_000.0
SECRET = "k3y-f0r-t3sts-0nly-" + "x" * 45


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(header: Any, claims: Any, secret: str = SECRET) -> str:
    """An HS256 token over any JSON header and payload, as no library would make it."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def verifier(**fields: Any) -> JwtVerifier:
    return JwtVerifier(JwtConfig(algorithms=["HS256"], secret=SECRET, **fields), Path("."))


def verify(v: JwtVerifier, token: str) -> Identity:
    return asyncio.run(v.verify(token, now=NOW))


def refusal(v: JwtVerifier, token: str) -> AuthFailure:
    coro: Coroutine[Any, Any, Identity] = v.verify(token, now=NOW)
    with pytest.raises(AuthFailure) as caught:
        asyncio.run(coro)
    return caught.value


def joserfc_decode(segment: bytes) -> bytes | None:
    try:
        return urlsafe_b64decode(segment)
    except (binascii.Error, ValueError):
        return None


def ours(segment: bytes) -> bytes | None:
    try:
        return b64url_decode(segment)
    except binascii.Error:
        return None


# --- base64url ---------------------------------------------------------------------------

@settings(max_examples=1500, deadline=None)
@given(st.one_of(
    st.binary(max_size=40).map(lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=")),  # well formed
    st.binary(max_size=40).map(base64.urlsafe_b64encode),  # padded
    st.binary(max_size=40).map(base64.standard_b64encode),  # the other alphabet
    st.text(alphabet="AQgwBERx-_+/=. \n\u00e9", max_size=12).map(str.encode),  # near misses
    st.binary(max_size=12),
))
def test_base64url_decodes_exactly_as_joserfc(segment: bytes) -> None:
    assert ours(segment) == joserfc_decode(segment)


@pytest.mark.parametrize("segment", [b"QQ", b"QUI", b"", b"-_8", b"_w"])
def test_base64url_accepts_what_joserfc_accepts(segment: bytes) -> None:
    assert b64url_decode(segment) == urlsafe_b64decode(segment)


@pytest.mark.parametrize("segment", [
    b"QR",  # bits after the last byte: "QQ" is its one spelling
    b"QUJ",  # likewise "QUI"
    b"Q", b"QUJDR",  # no encoding has this length
    b"QQ==", b"QQ=", b"+/8", b"QU I", b"QU\nI", b"QU\xc3\xa9",
])
def test_base64url_refuses_what_joserfc_refuses(segment: bytes) -> None:
    assert joserfc_decode(segment) is None
    with pytest.raises(binascii.Error):
        b64url_decode(segment)


def test_a_signature_spelled_a_second_way_is_refused() -> None:
    """HS256's 32 bytes leave 2 spare bits in the last character: a token with them set
    decodes to the same signature, and is still refused (one token, one spelling)."""
    token = signed({"alg": "HS256"}, {"sub": "alice"})
    v = verifier()
    assert verify(v, token).user == "alice"
    last = token[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = token[:-1] + alphabet[alphabet.index(last) + 1]
    assert base64.urlsafe_b64decode(twin.split(".")[2] + "=") == base64.urlsafe_b64decode(token.split(".")[2] + "=")
    failure = refusal(verifier(), twin)
    assert (failure.status, failure.reason, failure.detail) == (401, "invalid", "Signature verification failed")


# --- the header ----------------------------------------------------------------------------

@pytest.mark.parametrize("header", [["alg"], "alg", 7, None, {"typ": "JWT"}])
def test_a_header_that_is_no_object_with_alg_is_refused(header: object) -> None:
    """Before, a header that was a JSON list or string holding "alg" raised
    AttributeError in joserfc: an answer 500 and a traceback in the log per request."""
    failure = refusal(verifier(), signed(header, {"sub": "alice"}))
    assert (failure.status, failure.reason, failure.detail) == (401, "invalid", "malformed token: Invalid header")


@pytest.mark.parametrize("token", ["\ud800.e30.e30", "eyJhbGciOiJIUzI1NiJ9.e30.e30\udcff"])
def test_a_token_that_is_no_text_is_malformed(token: str) -> None:
    failure = refusal(verifier(), token)
    assert (failure.status, failure.reason, failure.detail) == (401, "invalid", "malformed token: UnicodeEncodeError")


def test_the_header_rules_hold_on_every_token() -> None:
    """The header's verdict is remembered only when it passed: a refused header is
    refused again, and a remembered one still needs each token's own signature."""
    v = verifier()
    for header, words in [
        ({"alg": "HS256", "crit": ["exp"], "exp": 1}, "'crit'"),
        ({"alg": "HS256", "b64": True}, "'b64'"),
        ({"alg": "HS256", "kid": 7}, "'kid'"),
        ({"alg": "HS256", "typ": 5}, "'typ' in header must be a str"),
        ({"alg": "HS512"}, "'HS512' is not one of HS256"),
    ]:
        for _ in range(2):
            assert words in refusal(v, signed(header, {"sub": "alice"})).detail
    good = {"alg": "HS256", "typ": "JWT"}
    assert verify(v, signed(good, {"sub": "alice"})).user == "alice"
    forged = refusal(v, signed(good, {"sub": "mallory"}, secret="not-the-secret-" + "z" * 40))
    assert forged.detail == "Signature verification failed"
    header, _, signature = signed(good, {"sub": "bob"}).split(".")
    tampered = f"{header}.{b64url(json.dumps({'sub': 'mallory'}).encode())}.{signature}"
    assert refusal(v, tampered).detail == "Signature verification failed"


def test_the_header_cache_is_bounded_and_holds_only_signed_headers() -> None:
    v = verifier()
    forged = signed({"alg": "HS256", "kid": "junk"}, {"sub": "alice"}, secret="not-the-secret-" + "z" * 40)
    assert refusal(v, forged).detail == "Signature verification failed"
    assert v._headers == {}  # a header passes its checks without any key: not a reason to keep it
    for i in range(HEADER_CACHE + 20):
        token = signed({"alg": "HS256", "kid": f"k{i}"}, {"sub": "alice"})
        assert verify(v, token).user == "alice"
        assert token.split(".")[0].encode() in v._headers
        assert len(v._headers) <= HEADER_CACHE
    # Past the bound, headers are still checked.
    assert "'kid'" in refusal(v, signed({"alg": "HS256", "kid": 1}, {"sub": "alice"})).detail


def test_the_signature_is_checked_by_joserfc(monkeypatch: pytest.MonkeyPatch) -> None:
    """joserfc's HMAC model says yes or no; the verifier does not decide by itself."""
    v = verifier()
    token = signed({"alg": "HS256"}, {"sub": "alice"})
    monkeypatch.setattr(joserfc.jwa.HMACAlgorithm, "verify", lambda self, msg, sig, key: False)
    assert refusal(v, token).detail == "Signature verification failed"
    monkeypatch.undo()
    assert verify(v, token).user == "alice"


def test_a_key_unfit_for_the_algorithm_fails_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    """joserfc's check_key (key use, type, the key's own alg) runs once, at load."""
    def refuse(self: object, key: object) -> None:
        raise joserfc.errors.InvalidKeyTypeError("no")

    monkeypatch.setattr(joserfc.jwa.HMACAlgorithm, "check_key", refuse)
    with pytest.raises(joserfc.errors.InvalidKeyTypeError):
        verifier()


# --- the verified-token cache ------------------------------------------------------------

def test_a_remembered_token_gives_the_same_identity_and_its_times_are_still_checked() -> None:
    v = verifier(leeway=5)
    token = jwt.encode({"sub": "alice", "exp": int(NOW) + 60, "nbf": int(NOW) - 1, "role": "x"}, SECRET)
    first = verify(v, token)
    assert (first.user, first.expires_at, first.claims["role"]) == ("alice", NOW + 65, "x")
    assert verify(v, token) is first
    with pytest.raises(TypeError):
        first.claims["role"] = "admin"  # type: ignore[index]
    late = v.verify(token, now=NOW + 65)
    with pytest.raises(AuthFailure) as caught:
        asyncio.run(late)
    assert (caught.value.reason, caught.value.detail) == ("expired", "token expired 5s ago")
    early = jwt.encode({"sub": "alice", "nbf": int(NOW) + 30}, SECRET)
    assert "nbf" in refusal(v, early).detail
    assert "nbf" in refusal(v, early).detail  # refused tokens are not remembered


@pytest.mark.parametrize(("value", "detail"), [
    (10**400, "claim 'exp' is too large for a time"),
    (True, "claim 'exp' is not a number"),
    ("1700000060", "claim 'exp' is not a number"),
])
def test_time_claims_that_are_no_float(value: object, detail: str) -> None:
    failure = refusal(verifier(), signed({"alg": "HS256"}, {"sub": "alice", "exp": value}))
    assert (failure.reason, failure.detail) == ("invalid", detail)


def test_float_and_integer_times() -> None:
    v = verifier()
    assert verify(v, jwt.encode({"sub": "a", "exp": NOW + 0.5}, SECRET)).expires_at == NOW + 0.5
    assert verify(v, jwt.encode({"sub": "a", "exp": int(NOW) + 1}, SECRET)).expires_at == NOW + 1
    assert "'exp' is too large" in refusal(v, signed({"alg": "HS256"}, {"sub": "a", "exp": 1e400})).detail
