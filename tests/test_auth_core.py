"""wsgate.auth without a gateway: token extraction, claim rules, config models, JWT
verification (HS256, RS256, ES256, EdDSA, JWKS), the HTTP backend and python hooks.

Tokens are real, minted with PyJWT from keys generated here; the JWKS endpoint and the
HTTP backend are small aiohttp apps on 127.0.0.1, counting what they are asked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import joserfc.jwa
import jwt
import pytest
from aiohttp import web
from conftest import serve_app
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from multidict import CIMultiDict, MultiDict
from pydantic import TypeAdapter, ValidationError

from wsgate.auth import (
    AUTH_PROTOCOL,
    BEARER_PROTOCOL_PREFIX,
    Allow,
    Authenticator,
    AuthSection,
    Handshake,
    HttpBackend,
    HttpBackendConfig,
    Identity,
    JwtConfig,
    JwtVerifier,
    PythonHook,
    Refuse,
    allowed,
    build_authenticator,
    extract_token,
    split_offer,
)
from wsgate.auth.identity import AuthFailure
from wsgate.auth.jwt import FIRST_RETRY
from wsgate.errors import WsgateError

NOW = 1_700_000_000.0
SECRET = "k3y-f0r-t3sts-0nly-" + "x" * 45  # 64 bytes: long enough for HS512 without a warning
OTHER_SECRET = "an0ther-k3y-f0r-t3sts-" + "y" * 42

# --- helpers ---------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A compact JWT assembled by hand, for tokens PyJWT refuses to mint."""
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}.{b64url(signature)}"


def pem(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "iat": int(NOW) - 10, "exp": int(NOW) + 60, **extra}


def jwt_config(**fields: Any) -> JwtConfig:
    return JwtConfig.model_validate(fields)


async def refusal(coro: Any) -> AuthFailure:
    """The AuthFailure ``coro`` raises (the test fails if it returns)."""
    with pytest.raises(AuthFailure) as info:
        await coro
    return info.value


def handshake(token: str | None = None, **fields: Any) -> Handshake:
    values: dict[str, Any] = {"path": "/ws", "query": {}, "headers": {}, "remote": "127.0.0.1", "token": token}
    values.update(fields)
    return Handshake(**values)


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Keys:
    rsa: rsa.RSAPrivateKey
    rsa_other: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    ec384: ec.EllipticCurvePrivateKey
    ed: ed25519.Ed25519PrivateKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa_other=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec=ec.generate_private_key(ec.SECP256R1()),
        ec384=ec.generate_private_key(ec.SECP384R1()),
        ed=ed25519.Ed25519PrivateKey.generate(),
    )


@pytest.fixture
def key_files(tmp_path: Path, keys: Keys) -> Path:
    """PEM public keys written beside a (virtual) config.yaml; returns the folder."""
    (tmp_path / "rsa.pem").write_bytes(pem(keys.rsa.public_key()))
    (tmp_path / "ec.pem").write_bytes(pem(keys.ec.public_key()))
    (tmp_path / "ec384.pem").write_bytes(pem(keys.ec384.public_key()))
    (tmp_path / "ed.pem").write_bytes(pem(keys.ed.public_key()))
    (tmp_path / "private.pem").write_bytes(
        keys.rsa.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return tmp_path


# --- tokens.py: split_offer ------------------------------------------------------------


def test_split_offer_removes_the_bearer_entry_and_returns_its_token() -> None:
    protocols, token = split_offer(["chat.v1, wsgate.auth, wsgate.bearer.abc.def-ghi"])
    assert protocols == ["chat.v1", AUTH_PROTOCOL]
    assert token == "abc.def-ghi"


def test_split_offer_reads_every_header_line_and_trims() -> None:
    protocols, token = split_offer(["  chat.v1 ,, ", "wsgate.bearer.t1 ,wsgate.auth", "wsgate.bearer.t2, mqtt"])
    assert protocols == ["chat.v1", "wsgate.auth", "mqtt"]
    assert token == "t1"


def test_split_offer_without_bearer_entry() -> None:
    assert split_offer(["chat.v1, mqtt"]) == (["chat.v1", "mqtt"], None)
    assert split_offer([]) == ([], None)


def test_split_offer_skips_an_empty_bearer_entry_for_the_next_one() -> None:
    assert split_offer(["wsgate.bearer., wsgate.bearer.real"]) == ([], "real")


def test_split_offer_never_passes_on_a_differently_cased_bearer_entry() -> None:
    protocols, token = split_offer(["WSGATE.Bearer.secret, chat"])
    assert protocols == ["chat"]
    assert token == "secret"


_TCHAR = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+/=", min_size=1,
                 max_size=30)
_ENTRY = st.one_of(
    _TCHAR.map(lambda t: ("plain", t)),
    _TCHAR.map(lambda t: ("bearer", t)),
    st.sampled_from(["wsgate.auth", "wsgate.bearer", "wsgate.bearerx", "x.wsgate.bearer.y"]).map(
        lambda t: ("plain", t)
    ),
)


@settings(max_examples=300, deadline=None)
@given(entries=st.lists(_ENTRY, max_size=8), cuts=st.lists(st.integers(min_value=0, max_value=8), max_size=3),
       spaces=st.sampled_from(["", " ", "  ", "\t"]))
def test_split_offer_property(entries: list[tuple[str, str]], cuts: list[int], spaces: str) -> None:
    rendered = [BEARER_PROTOCOL_PREFIX + text if kind == "bearer" else text for kind, text in entries]
    # Spread the offer over several header lines, as a client or a proxy may.
    bounds = sorted({0, len(rendered), *(min(c, len(rendered)) for c in cuts)})
    lines = [f",{spaces}".join(rendered[a:b]) for a, b in itertools.pairwise(bounds)]
    protocols, token = split_offer(lines)
    assert not any(p.lower().startswith(BEARER_PROTOCOL_PREFIX) for p in protocols)
    assert protocols == [text for kind, text in entries if kind == "plain"]
    bearers = [text for kind, text in entries if kind == "bearer"]
    assert token == (bearers[0] if bearers else None)


# --- tokens.py: extract_token ----------------------------------------------------------


def test_authorization_header_comes_first() -> None:
    headers = CIMultiDict({"Authorization": "Bearer from-header", "Cookie": "sid=from-cookie"})
    assert extract_token(headers, {"access_token": "from-query"}, "from-protocol", "sid") == "from-header"


def test_then_the_subprotocol_then_the_query_then_the_cookie() -> None:
    headers = CIMultiDict({"Cookie": "sid=from-cookie"})
    assert extract_token(headers, {"access_token": "from-query"}, "from-protocol", "sid") == "from-protocol"
    assert extract_token(headers, {"access_token": "from-query"}, None, "sid") == "from-query"
    assert extract_token(headers, {}, None, "sid") == "from-cookie"


def test_cookie_is_only_read_when_configured() -> None:
    assert extract_token(CIMultiDict({"Cookie": "sid=from-cookie"}), {}, None, None) is None


@pytest.mark.parametrize("value", ["bearer tok", "BEARER tok", "Bearer   tok  ", "  Bearer tok"])
def test_bearer_scheme_is_case_insensitive(value: str) -> None:
    assert extract_token(CIMultiDict({"authorization": value}), {}, None, None) == "tok"


def test_other_authorization_schemes_are_not_tokens() -> None:
    headers = CIMultiDict({"Authorization": "Basic YWxpY2U6c2VjcmV0"})
    assert extract_token(headers, {"access_token": "from-query"}, None, None) == "from-query"


def test_header_lookup_ignores_case_even_in_a_plain_dict() -> None:
    assert extract_token({"AUTHORIZATION": "Bearer tok"}, {}, None, None) == "tok"


@pytest.mark.parametrize(
    ("headers", "query", "protocol"),
    [
        ({"Authorization": "Bearer "}, {}, None),
        ({"Authorization": "Bearer"}, {}, None),
        ({}, {"access_token": ""}, None),
        ({}, {}, ""),
        ({"Cookie": "sid="}, {}, None),
        ({"Cookie": 'sid=""'}, {}, None),
    ],
)
def test_empty_values_count_as_absent(headers: dict[str, str], query: dict[str, str], protocol: str | None) -> None:
    assert extract_token(CIMultiDict(headers), query, protocol, "sid") is None


def test_an_empty_source_falls_through_to_the_next() -> None:
    headers = CIMultiDict({"Authorization": "Bearer ", "Cookie": "sid=c"})
    assert extract_token(headers, {"access_token": ""}, "", "sid") == "c"


def test_cookie_parsing_is_tolerant() -> None:
    # SimpleCookie gives up on the unquoted comma and the stray '"'; the cookie is still found.
    header = 'theme=dark,light; junk; "odd=1; sid="tok.en-1"; after=2'
    assert extract_token(CIMultiDict({"Cookie": header}), {}, None, "sid") == "tok.en-1"
    assert extract_token(CIMultiDict({"Cookie": "xsid=no; sid = spaced ;"}), {}, None, "sid") == "spaced"


def test_cookie_in_a_second_cookie_header() -> None:
    headers = CIMultiDict([("Cookie", "a=1"), ("cookie", "sid=second")])
    assert extract_token(headers, {}, None, "sid") == "second"


def test_query_multidict() -> None:
    assert extract_token(CIMultiDict(), MultiDict([("access_token", "q1"), ("access_token", "q2")]), None, None) == "q1"


# --- allow.py --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claim_values", "rules", "expected"),
    [
        ({"role": "admin"}, {"role": ["admin", "mod"]}, True),
        ({"role": "user"}, {"role": ["admin", "mod"]}, False),
        ({"roles": ["user", "mod"]}, {"roles": ["mod"]}, True),
        ({"roles": ["user"]}, {"roles": ["mod"]}, False),
        ({}, {"role": ["admin"]}, False),
        ({"role": "admin"}, {}, True),
        ({"role": "admin", "tenant": "a"}, {"role": ["admin"], "tenant": ["b"]}, False),
        ({"role": "admin", "tenant": "b"}, {"role": ["admin"], "tenant": ["b"]}, True),
        ({"level": 3}, {"level": ["3"]}, True),
        ({"verified": True}, {"verified": ["true"]}, True),
        ({"verified": False}, {"verified": ["true"]}, False),
        ({"org": {"name": "admin"}}, {"org": ["admin"]}, False),
        ({"roles": [["admin"]]}, {"roles": ["['admin']"]}, False),
    ],
)
def test_allowed(claim_values: dict[str, Any], rules: dict[str, list[str]], expected: bool) -> None:
    assert allowed(claim_values, rules) is expected


def test_allow_rules_from_yaml_values_meet_json_claims() -> None:
    rules = TypeAdapter(Allow).validate_python({"role": "admin", "verified": True, "level": [1, 2]})
    assert rules == {"role": ["admin"], "verified": ["true"], "level": ["1", "2"]}
    assert allowed({"role": "admin", "verified": True, "level": 2}, rules)
    assert not allowed({"role": "admin", "verified": True, "level": 3}, rules)


@pytest.mark.parametrize("bad", [{"role": []}, {"role": [{"a": 1}]}, {"role": {"a": 1}}, ["role"]])
def test_allow_refuses_rules_that_name_nothing(bad: object) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(Allow).validate_python(bad)


# --- identity.py -----------------------------------------------------------------------


def test_handshake_repr_shows_no_token() -> None:
    secret = "eyJhbGciOi.secret-token.value"
    hs = handshake(
        secret,
        headers=CIMultiDict({"Authorization": f"Bearer {secret}", "Cookie": f"sid={secret}"}),
        query={"access_token": secret},
    )
    text = repr(hs)
    assert secret not in text
    assert "authorization" in text
    assert "access_token" in text
    assert hs.claims == {}
    assert hs.user is None


def test_refuse_is_a_wsgate_error_with_status_and_reason() -> None:
    refusal_ = Refuse(404, "no such room")
    assert isinstance(refusal_, WsgateError)
    assert (refusal_.status, refusal_.reason) == (404, "no such room")
    assert (Refuse().status, Refuse().reason) == (403, "forbidden")
    with pytest.raises(ValueError, match="4xx"):
        Refuse(500, "oops")


# --- models.py -------------------------------------------------------------------------


def test_hs_without_secret() -> None:
    with pytest.raises(ValidationError, match="HS256 needs a secret"):
        jwt_config(algorithms=["HS256"])


def test_rs_without_key() -> None:
    with pytest.raises(ValidationError, match="needs a public_key"):
        jwt_config(algorithms=["RS256"])


def test_mixed_hs_and_rs_is_refused() -> None:
    with pytest.raises(ValidationError, match="define two authenticators"):
        jwt_config(algorithms=["HS256", "RS256"], secret=SECRET, public_key="rsa.pem")


@pytest.mark.parametrize("none", ["none", "None", "NONE"])
def test_none_algorithm_is_refused(none: str) -> None:
    with pytest.raises(ValidationError, match="never accepted"):
        jwt_config(algorithms=["HS256", none], secret=SECRET)


@pytest.mark.parametrize("algorithms", [[], ["PS256"], ["hs256"]])
def test_unknown_or_no_algorithms(algorithms: list[str]) -> None:
    with pytest.raises(ValidationError):
        jwt_config(algorithms=algorithms, secret=SECRET)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"algorithms": ["HS256"], "secret": SECRET, "public_key": "k.pem"}, "remove public_key"),
        ({"algorithms": ["RS256"], "secret": SECRET, "public_key": "k.pem"}, "remove secret"),
        ({"algorithms": ["RS256"], "public_key": "k.pem", "jwks_url": "https://idp/jwks"}, "not both"),
        ({"algorithms": ["RS256"], "jwks_url": "ftp://idp/jwks"}, "not an http"),
        ({"algorithms": ["HS256"], "secret": ""}, "needs a secret"),
        ({"algorithms": ["HS256"], "secret": SECRET, "jwks_cache": 0}, "greater than 0"),
    ],
)
def test_jwt_config_refusals(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        jwt_config(**fields)


def test_jwt_config_defaults_and_durations() -> None:
    config = jwt_config(algorithms="RS256", jwks_url="https://idp.example.com/jwks", jwks_cache="10m", leeway="30s")
    assert config.algorithms == ["RS256"]
    assert (config.jwks_cache, config.leeway, config.user_claim) == (600.0, 30.0, "sub")
    assert config.audience is None
    assert config.issuer is None


def test_secret_never_prints() -> None:
    config = jwt_config(algorithms=["HS256"], secret=SECRET)
    auth = Authenticator.model_validate({"jwt": {"algorithms": ["HS256"], "secret": SECRET}})
    for text in (repr(config), str(config), config.model_dump_json(), repr(config.model_dump()), repr(auth),
                 auth.model_dump_json()):
        assert SECRET not in text
        assert "**********" in text
    assert config.secret is not None
    assert config.secret.get_secret_value() == SECRET


@pytest.mark.parametrize(
    "entry",
    [
        {},
        {"cookie": "sid"},
        {"jwt": {"algorithms": ["HS256"], "secret": SECRET}, "http": {"url": "http://127.0.0.1/auth"}},
        {"http": {"url": "http://127.0.0.1/auth"}, "python": "auth:check"},
    ],
)
def test_authenticator_needs_exactly_one_type(entry: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="an authenticator needs exactly one of jwt, http, python"):
        Authenticator.model_validate(entry)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"python": "auth.check"}, "module.path:function"),
        ({"python": "auth:"}, "module.path:function"),
        ({"http": {"url": "auth.example.com/check"}}, "not an http"),
        ({"http": {"url": "http://127.0.0.1/check", "timeout": "forever"}}, "expected a duration"),
        ({"python": "auth:check", "cookie": "bad name"}, "not a cookie name"),
        ({"python": "auth:check", "extra": 1}, "Extra inputs are not permitted"),
    ],
)
def test_authenticator_field_refusals(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Authenticator.model_validate(entry)


def test_auth_section() -> None:
    adapter = TypeAdapter(AuthSection)
    section = adapter.validate_python({
        "users": {"jwt": {"algorithms": ["HS256"], "secret": SECRET}, "cookie": "sid"},
        "backend_2": {"http": {"url": "https://auth.example.com/check", "timeout": "500ms"}},
        "hook": {"python": "hooks.auth:check"},
    })
    assert section["backend_2"].http == HttpBackendConfig(url="https://auth.example.com/check", timeout=0.5)
    assert section["users"].cookie == "sid"
    assert section["hook"].python == "hooks.auth:check"
    with pytest.raises(ValidationError, match="not an authenticator name"):
        adapter.validate_python({"my users": {"python": "a:b"}})


# --- jwt.py: local keys ----------------------------------------------------------------

ALGORITHMS = ["HS256", "RS256", "ES256", "EdDSA"]


def signing(alg: str, keys: Keys) -> tuple[Any, dict[str, Any]]:
    """The signing key for ``alg`` and the config fields that verify it."""
    return {
        "HS256": (SECRET, {"secret": SECRET}),
        "RS256": (keys.rsa, {"public_key": "rsa.pem"}),
        "ES256": (keys.ec, {"public_key": "ec.pem"}),
        "EdDSA": (keys.ed, {"public_key": "ed.pem"}),
    }[alg]


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_valid_token(alg: str, keys: Keys, key_files: Path) -> None:
    key, fields = signing(alg, keys)
    verifier = JwtVerifier(jwt_config(algorithms=[alg], **fields), key_files)
    token = jwt.encode(claims(role="admin"), key, algorithm=alg)
    identity = await verifier.verify(token, now=NOW)
    assert identity.user == "alice"
    assert identity.claims["role"] == "admin"
    assert identity.expires_at == NOW + 60


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_bad_signature(alg: str, keys: Keys, key_files: Path) -> None:
    _, fields = signing(alg, keys)
    wrong: Any = {
        "HS256": OTHER_SECRET,
        "RS256": keys.rsa_other,
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }[alg]
    verifier = JwtVerifier(jwt_config(algorithms=[alg], **fields), key_files)
    failure = await refusal(verifier.verify(jwt.encode(claims(), wrong, algorithm=alg), now=NOW))
    assert (failure.status, failure.reason) == (401, "invalid")
    assert "Signature verification failed" in failure.detail


async def test_tampered_payload(keys: Keys, key_files: Path) -> None:
    verifier = JwtVerifier(jwt_config(algorithms=["RS256"], public_key="rsa.pem"), key_files)
    header, _, signature = jwt.encode(claims(), keys.rsa, algorithm="RS256").split(".")
    forged = f"{header}.{b64url(json.dumps(claims(sub='mallory')).encode())}.{signature}"
    assert (await refusal(verifier.verify(forged, now=NOW))).reason == "invalid"


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.e30", "\u00e9.\u00e9.\u00e9",
              handmade({"alg": "HS256"}, {})[:-1] + "!!!!"],
)
async def test_malformed_token(token: str) -> None:
    verifier = JwtVerifier(jwt_config(algorithms=["HS256"], secret=SECRET), Path("."))
    failure = await refusal(verifier.verify(token, now=NOW))
    assert (failure.status, failure.reason) == (401, "invalid")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
@pytest.mark.parametrize("config_alg", ["HS256", "RS256"])
async def test_alg_none_never_passes(alg: str, config_alg: str, keys: Keys, key_files: Path) -> None:
    _, fields = signing(config_alg, keys)
    verifier = JwtVerifier(jwt_config(algorithms=[config_alg], **fields), key_files)
    token = handmade({"alg": alg, "typ": "JWT"}, claims())
    assert token.endswith(".")  # really unsigned
    failure = await refusal(verifier.verify(token, now=NOW))
    assert (failure.status, failure.reason) == (401, "invalid")


async def test_algorithm_outside_the_list(keys: Keys, key_files: Path) -> None:
    hs = JwtVerifier(jwt_config(algorithms=["HS256"], secret=SECRET), key_files)
    failure = await refusal(hs.verify(jwt.encode(claims(), SECRET, algorithm="HS512"), now=NOW))
    assert "'HS512' is not one of HS256" in failure.detail
    rs = JwtVerifier(jwt_config(algorithms=["RS256"], public_key="rsa.pem"), key_files)
    assert (await refusal(rs.verify(jwt.encode(claims(), keys.rsa, algorithm="RS384"), now=NOW))).reason == "invalid"
    both = JwtVerifier(jwt_config(algorithms=["RS256", "RS384"], public_key="rsa.pem"), key_files)
    assert (await both.verify(jwt.encode(claims(), keys.rsa, algorithm="RS384"), now=NOW)).user == "alice"


async def test_hs_rs_confusion_fails(keys: Keys, key_files: Path) -> None:
    """HS256 signed with the RSA public key's PEM as the secret: the classic attack."""
    public_pem = (key_files / "rsa.pem").read_bytes()
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims()).encode())}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64url(signature)}"
    # The forgery is well made: it is valid HS256 under that "secret".
    assert jwt.decode(token, public_pem, algorithms=["HS256"], options={"verify_signature": False})["sub"] == "alice"
    verifier = JwtVerifier(jwt_config(algorithms=["RS256"], public_key="rsa.pem"), key_files)
    failure = await refusal(verifier.verify(token, now=NOW))
    assert (failure.status, failure.reason) == (401, "invalid")


async def test_header_rules(keys: Keys, key_files: Path) -> None:
    """A signed token that asks for a critical extension is refused; a large header (a
    certificate chain, a long kid) is not a reason to refuse; a kid must be a string."""
    verifier = JwtVerifier(jwt_config(algorithms=["RS256"], public_key="rsa.pem"), key_files)
    crit = jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"crit": ["b64"], "b64": True})
    assert "'crit'" in (await refusal(verifier.verify(crit, now=NOW))).detail
    chain = jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"x5c": ["A" * 1500], "kid": "k" * 300})
    assert (await verifier.verify(chain, now=NOW)).user == "alice"
    numeric_kid = handmade({"alg": "RS256", "kid": 7}, claims(), b"x" * 256)
    assert "'kid'" in (await refusal(verifier.verify(numeric_kid, now=NOW))).detail


async def test_claim_types_and_messages() -> None:
    verifier = JwtVerifier(jwt_config(algorithms=["HS256"], secret=SECRET, audience="chat", issuer="https://idp"),
                           Path("."))
    good = {"aud": "chat", "iss": "https://idp"}
    cases = [
        ({**good, "aud": 5}, "claim 'aud' is not a string or a list of strings"),
        ({**good, "aud": "billing"}, "token audience 'billing' is not 'chat'"),
        ({"iss": "https://idp"}, "token has no 'aud' claim"),
        ({**good, "iss": "https://evil"}, "token issuer 'https://evil' is not 'https://idp'"),
        ({**good, "sub": 42}, "claim 'sub' is not a string"),
        ({**good, "jti": 1}, "claim 'jti' is not a string"),
    ]
    for extra, message in cases:
        failure = await refusal(verifier.verify(jwt.encode(claims(**extra), SECRET), now=NOW))
        assert (failure.status, failure.reason) == (401, "invalid")
        assert message in failure.detail
    not_an_object = handmade({"alg": "HS256"}, {})  # replaced below by a signed JSON list
    header = not_an_object.split(".")[0]
    signing_input = f"{header}.{b64url(b'[1]')}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    failure = await refusal(verifier.verify(f"{signing_input}.{b64url(signature)}", now=NOW))
    assert failure.detail == "token payload is not a JSON object"


def test_a_pem_cannot_be_an_hmac_secret(key_files: Path) -> None:
    public_pem = (key_files / "rsa.pem").read_text()
    with pytest.raises(ValueError, match="looks like a PEM key"):
        JwtVerifier(jwt_config(algorithms=["HS256"], secret=public_pem), key_files)


async def test_expired() -> None:
    verifier = JwtVerifier(jwt_config(algorithms=["HS256"], secret=SECRET), Path("."))
    for exp in (NOW - 1, NOW):  # exp itself is already too late
        failure = await refusal(verifier.verify(jwt.encode(claims(exp=int(exp)), SECRET, algorithm="HS256"), now=NOW))
        assert (failure.status, failure.reason) == (401, "expired")
    assert (await verifier.verify(jwt.encode(claims(exp=int(NOW) + 1), SECRET), now=NOW)).user == "alice"


async def test_expiry_against_the_wall_clock_by_default() -> None:
    verifier = JwtVerifier(jwt_config(algorithms=["HS256"], secret=SECRET), Path("."))
    fresh = claims(iat=int(time.time()), exp=int(time.time()) + 60)
    assert (await verifier.verify(jwt.encode(fresh, SECRET))).user == "alice"
    stale = claims(iat=int(time.time()) - 120, exp=int(time.time()) - 60)
    assert (await refusal(verifier.verify(jwt.encode(stale, SECRET)))).reason == "expired"


async def test_nbf_in_the_future() -> None:
    verifier = JwtVerifier(jwt_config(algorithms=["HS256"], secret=SECRET), Path("."))
    failure = await refusal(verifier.verify(jwt.encode(claims(nbf=int(NOW) + 30), SECRET), now=NOW))
    assert (failure.reason, "nbf" in failure.detail) == ("invalid", True)
    assert (await verifier.verify(jwt.encode(claims(nbf=int(NOW)), SECRET), now=NOW)).user == "alice"


async def test_iat_in_the_future() -> None:
    verifier = JwtVerifier(jwt_config(algorithms=["HS256"], secret=SECRET), Path("."))
    failure = await refusal(verifier.verify(jwt.encode(claims(iat=int(NOW) + 30), SECRET), now=NOW))
    assert "iat" in failure.detail


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["soon", True, float("inf"), float("nan")])
async def test_time_claims_must_be_numbers(claim: str, value: object) -> None:
    verifier = JwtVerifier(jwt_config(algorithms=["HS256"], secret=SECRET), Path("."))
    failure = await refusal(verifier.verify(jwt.encode(claims(**{claim: value}), SECRET), now=NOW))
    assert failure.reason == "invalid"
    assert claim in failure.detail


async def test_leeway_is_honoured() -> None:
    verifier = JwtVerifier(jwt_config(algorithms=["HS256"], secret=SECRET, leeway="10s"), Path("."))
    late = jwt.encode(claims(exp=int(NOW) - 5), SECRET)
    identity = await verifier.verify(late, now=NOW)
    assert identity.expires_at == NOW - 5 + 10
    early = jwt.encode(claims(nbf=int(NOW) + 5, iat=int(NOW) + 5), SECRET)
    assert (await verifier.verify(early, now=NOW)).user == "alice"
    assert (await refusal(verifier.verify(jwt.encode(claims(exp=int(NOW) - 10), SECRET), now=NOW))).reason == "expired"
    assert (await refusal(verifier.verify(jwt.encode(claims(nbf=int(NOW) + 11), SECRET), now=NOW))).reason == "invalid"


async def test_no_exp_means_no_expiry() -> None:
    verifier = JwtVerifier(jwt_config(algorithms=["HS256"], secret=SECRET, leeway=10), Path("."))
    identity = await verifier.verify(jwt.encode({"sub": "alice"}, SECRET), now=NOW)
    assert identity.expires_at is None


async def test_audience() -> None:
    verifier = JwtVerifier(jwt_config(algorithms=["HS256"], secret=SECRET, audience="chat"), Path("."))
    assert (await verifier.verify(jwt.encode(claims(aud="chat"), SECRET), now=NOW)).user == "alice"
    assert (await verifier.verify(jwt.encode(claims(aud=["billing", "chat"]), SECRET), now=NOW)).user == "alice"
    for bad in (claims(aud="billing"), claims(aud=["billing"]), claims()):
        failure = await refusal(verifier.verify(jwt.encode(bad, SECRET), now=NOW))
        assert (failure.status, failure.reason) == (401, "invalid")


async def test_unset_audience_is_not_checked() -> None:
    verifier = JwtVerifier(jwt_config(algorithms=["HS256"], secret=SECRET), Path("."))
    assert (await verifier.verify(jwt.encode(claims(aud="whatever"), SECRET), now=NOW)).user == "alice"


async def test_issuer() -> None:
    verifier = JwtVerifier(jwt_config(algorithms=["HS256"], secret=SECRET, issuer="https://idp"), Path("."))
    assert (await verifier.verify(jwt.encode(claims(iss="https://idp"), SECRET), now=NOW)).user == "alice"
    for bad in (claims(iss="https://evil"), claims()):
        assert (await refusal(verifier.verify(jwt.encode(bad, SECRET), now=NOW))).reason == "invalid"


async def test_missing_user_claim() -> None:
    verifier = JwtVerifier(jwt_config(algorithms=["HS256"], secret=SECRET), Path("."))
    failure = await refusal(verifier.verify(jwt.encode({"exp": int(NOW) + 60}, SECRET), now=NOW))
    assert (failure.status, failure.reason, failure.detail) == (401, "invalid", "token has no 'sub' claim")


async def test_user_claim_is_configurable() -> None:
    verifier = JwtVerifier(jwt_config(algorithms=["HS256"], secret=SECRET, user_claim="uid"), Path("."))
    assert (await verifier.verify(jwt.encode(claims(uid=42), SECRET), now=NOW)).user == "42"
    for bad in ({"uid": ""}, {"uid": True}, {"uid": ["a"]}, {}):
        failure = await refusal(verifier.verify(jwt.encode(claims(**bad), SECRET), now=NOW))
        assert "'uid'" in failure.detail


async def test_no_detail_contains_the_token(keys: Keys, key_files: Path) -> None:
    verifier = JwtVerifier(jwt_config(algorithms=["RS256"], public_key="rsa.pem", audience="chat"), key_files)
    tokens = [
        jwt.encode(claims(), keys.rsa_other, algorithm="RS256"),
        jwt.encode(claims(aud="x"), keys.rsa, algorithm="RS256"),
        jwt.encode(claims(exp=1), keys.rsa, algorithm="RS256"),
        handmade({"alg": "none"}, claims()),
        handmade({"alg": "RS256", "kid": "x" * 500}, claims(), b"sig"),
        "garbage-" + "z" * 100,
    ]
    for token in tokens:
        failure = await refusal(verifier.verify(token, now=NOW))
        assert token not in failure.detail
        assert token not in str(failure)
        assert failure.__cause__ is None
        assert (failure.__context__ is None or failure.__suppress_context__)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"algorithms": ["RS256"], "public_key": "missing.pem"}, "cannot read"),
        ({"algorithms": ["RS256"], "public_key": "private.pem"}, "holds a private key"),
        ({"algorithms": ["RS256"], "public_key": "ec.pem"}, "cannot verify RS256"),
        ({"algorithms": ["ES256"], "public_key": "ec384.pem"}, "cannot verify ES256"),
        ({"algorithms": ["ES256", "RS256"], "public_key": "ec.pem"}, "cannot verify RS256"),
        ({"algorithms": ["EdDSA"], "public_key": "rsa.pem"}, "cannot verify EdDSA"),
    ],
)
def test_bad_public_key_files(fields: dict[str, Any], message: str, key_files: Path) -> None:
    (key_files / "garbage.pem").write_text("not a key")
    with pytest.raises(ValueError, match=message):
        JwtVerifier(jwt_config(**fields), key_files)


def test_not_a_pem(key_files: Path) -> None:
    (key_files / "garbage.pem").write_text("not a key")
    with pytest.raises(ValueError, match="is not a PEM public key"):
        JwtVerifier(jwt_config(algorithms=["RS256"], public_key="garbage.pem"), key_files)


async def test_public_key_path_is_relative_to_the_config_folder(keys: Keys, key_files: Path) -> None:
    config = jwt_config(algorithms=["ES256"], public_key=str(key_files / "ec.pem"))
    verifier = JwtVerifier(config, Path("/nonexistent"))  # an absolute path ignores base
    assert (await verifier.verify(jwt.encode(claims(), keys.ec, algorithm="ES256"), now=NOW)).user == "alice"


# --- jwt.py: JWKS ----------------------------------------------------------------------


@dataclass
class JwksServer:
    url: str
    document: dict[str, Any]
    status: int = 200
    body: bytes | None = None
    fetches: int = 0
    delay: float = 0.0


def jwk(private_key: Any, kid: str | None, alg: str | None = None) -> dict[str, Any]:
    algorithm: Any = {rsa.RSAPrivateKey: RSAAlgorithm, ec.EllipticCurvePrivateKey: ECAlgorithm,
                      ed25519.Ed25519PrivateKey: OKPAlgorithm}
    cls = next(c for t, c in algorithm.items() if isinstance(private_key, t))
    data: dict[str, Any] = cls.to_jwk(private_key.public_key(), as_dict=True)
    if kid is not None:
        data["kid"] = kid
    if alg is not None:
        data["alg"] = alg
    return data


@pytest.fixture
async def jwks_server(keys: Keys) -> AsyncIterator[JwksServer]:
    server = JwksServer(url="", document={"keys": [jwk(keys.rsa, "k1", "RS256")]})

    async def serve(request: web.Request) -> web.Response:
        server.fetches += 1
        if server.delay:
            await asyncio.sleep(server.delay)
        if server.body is not None:
            return web.Response(body=server.body, status=server.status)
        return web.json_response(server.document, status=server.status)

    app = web.Application()
    app.router.add_get("/jwks", serve)
    async with serve_app(app) as url:
        server.url = url + "/jwks"
        yield server


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def jwks_verifier(jwks_server: JwksServer) -> AsyncIterator[Callable[..., JwtVerifier]]:
    made: list[JwtVerifier] = []

    def make(clock: FakeClock | None = None, **fields: Any) -> JwtVerifier:
        config = jwt_config(**{"algorithms": ["RS256"], "jwks_url": jwks_server.url, "jwks_cache": 600, **fields})
        verifier = JwtVerifier(config, Path("."), clock=clock or FakeClock())
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        await verifier.close()


def rs256(keys: Keys, kid: str | None, key: Any = None, **extra: Any) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**extra), key or keys.rsa, algorithm="RS256", headers=headers)


async def test_jwks_is_fetched_once_and_cached(
    keys: Keys, jwks_server: JwksServer, jwks_verifier: Callable[..., JwtVerifier]
) -> None:
    clock = FakeClock()
    verifier = jwks_verifier(clock)
    for _ in range(3):
        assert (await verifier.verify(rs256(keys, "k1"), now=NOW)).user == "alice"
    assert jwks_server.fetches == 1
    clock.now += 599
    await verifier.verify(rs256(keys, "k1"), now=NOW)
    assert jwks_server.fetches == 1
    clock.now += 1  # jwks_cache has passed
    await verifier.verify(rs256(keys, "k1"), now=NOW)
    assert jwks_server.fetches == 2


async def test_concurrent_handshakes_share_one_fetch(
    keys: Keys, jwks_server: JwksServer, jwks_verifier: Callable[..., JwtVerifier]
) -> None:
    jwks_server.delay = 0.05
    verifier = jwks_verifier()
    token = rs256(keys, "k1")
    results = await asyncio.gather(*(verifier.verify(token, now=NOW) for _ in range(20)))
    assert {r.user for r in results} == {"alice"}
    assert jwks_server.fetches == 1


async def test_unknown_kid_refetches_at_most_once_per_window(
    keys: Keys, jwks_server: JwksServer, jwks_verifier: Callable[..., JwtVerifier]
) -> None:
    clock = FakeClock()
    verifier = jwks_verifier(clock)
    await verifier.verify(rs256(keys, "k1"), now=NOW)
    assert jwks_server.fetches == 1
    failure = await refusal(verifier.verify(rs256(keys, "ghost"), now=NOW))
    assert (failure.status, failure.reason) == (401, "invalid")
    assert "'ghost'" in failure.detail
    assert jwks_server.fetches == 2
    for kid in ("ghost", "ghost2", "ghost3"):
        await refusal(verifier.verify(rs256(keys, kid), now=NOW))
    clock.now += 29
    await refusal(verifier.verify(rs256(keys, "ghost"), now=NOW))
    assert jwks_server.fetches == 2
    clock.now += 1
    await refusal(verifier.verify(rs256(keys, "ghost"), now=NOW))
    assert jwks_server.fetches == 3


async def test_refetch_window_is_configurable(keys: Keys, jwks_server: JwksServer) -> None:
    clock = FakeClock()
    config = jwt_config(algorithms=["RS256"], jwks_url=jwks_server.url)
    verifier = JwtVerifier(config, Path("."), clock=clock, min_refetch_interval=5)
    try:
        await refusal(verifier.verify(rs256(keys, "ghost"), now=NOW))
        await refusal(verifier.verify(rs256(keys, "ghost"), now=NOW))
        assert jwks_server.fetches == 2  # the first fetch, then one refetch
        clock.now += 5
        await refusal(verifier.verify(rs256(keys, "ghost"), now=NOW))
        assert jwks_server.fetches == 3
    finally:
        await verifier.close()


async def test_key_rotation_is_picked_up_by_the_refetch(
    keys: Keys, jwks_server: JwksServer, jwks_verifier: Callable[..., JwtVerifier]
) -> None:
    verifier = jwks_verifier()
    await verifier.verify(rs256(keys, "k1"), now=NOW)
    jwks_server.document = {"keys": [jwk(keys.rsa_other, "k2", "RS256")]}
    identity = await verifier.verify(rs256(keys, "k2", key=keys.rsa_other), now=NOW)
    assert identity.user == "alice"
    assert jwks_server.fetches == 2
    # The retired key is gone with the old document.
    assert (await refusal(verifier.verify(rs256(keys, "k1"), now=NOW))).reason == "invalid"


async def test_a_known_kid_with_the_wrong_key_does_not_refetch(
    keys: Keys, jwks_server: JwksServer, jwks_verifier: Callable[..., JwtVerifier]
) -> None:
    verifier = jwks_verifier()
    failure = await refusal(verifier.verify(rs256(keys, "k1", key=keys.rsa_other), now=NOW))
    assert "Signature verification failed" in failure.detail
    assert jwks_server.fetches == 1


async def test_jwks_keys_without_alg_serve_every_fitting_algorithm(
    keys: Keys, jwks_server: JwksServer, jwks_verifier: Callable[..., JwtVerifier]
) -> None:
    jwks_server.document = {"keys": [jwk(keys.rsa, "r"), jwk(keys.ec, "e"), jwk(keys.ed, "d"),
                                     {"kty": "oct", "kid": "h", "k": b64url(SECRET.encode())}]}
    verifier = jwks_verifier(algorithms=["RS256", "RS384", "ES256", "EdDSA"])
    for key, alg, kid in ((keys.rsa, "RS384", "r"), (keys.ec, "ES256", "e"), (keys.ed, "EdDSA", "d")):
        token = jwt.encode(claims(), key, algorithm=alg, headers={"kid": kid})
        assert (await verifier.verify(token, now=NOW)).user == "alice"
    # A key cannot stand in for another type's algorithm, nor the oct key for anything.
    ec_as_rsa = handmade({"alg": "RS256", "kid": "e"}, claims(), b"x" * 256)
    assert "cannot verify RS256" in (await refusal(verifier.verify(ec_as_rsa, now=NOW))).detail
    assert "'HS256' is not one of" in (
        await refusal(verifier.verify(jwt.encode(claims(), SECRET, headers={"kid": "h"}), now=NOW))
    ).detail
    assert jwks_server.fetches == 1


async def test_a_declared_alg_binds_the_key(
    keys: Keys, jwks_server: JwksServer, jwks_verifier: Callable[..., JwtVerifier]
) -> None:
    verifier = jwks_verifier(algorithms=["RS256", "RS384"])
    token = jwt.encode(claims(), keys.rsa, algorithm="RS384", headers={"kid": "k1"})  # k1 says RS256
    assert (await refusal(verifier.verify(token, now=NOW))).reason == "invalid"


async def test_a_token_without_kid_uses_the_only_key(
    keys: Keys, jwks_server: JwksServer, jwks_verifier: Callable[..., JwtVerifier]
) -> None:
    verifier = jwks_verifier()
    assert (await verifier.verify(rs256(keys, None), now=NOW)).user == "alice"
    jwks_server.document = {"keys": [jwk(keys.rsa, "k1"), jwk(keys.rsa_other, "k2")]}
    other = jwks_verifier()
    failure = await refusal(other.verify(rs256(keys, None), now=NOW))
    assert "no 'kid'" in failure.detail


@pytest.mark.parametrize(
    ("status", "body", "what"),
    [
        (500, None, "answered HTTP 500"),
        (404, None, "answered HTTP 404"),
        (200, b"<html>", "is not JSON"),
        (200, b'{"keys": "nope"}', "not a JWK set"),
        (200, b'{"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB"}]}', "no key usable"),
        (200, b'{"keys": [{"kty": "oct", "kid": "k1", "k": "c2VjcmV0"}]}', "no key usable"),
    ],
)
async def test_jwks_answers_that_are_backend_errors(
    status: int, body: bytes | None, what: str, keys: Keys, jwks_server: JwksServer,
    jwks_verifier: Callable[..., JwtVerifier],
) -> None:
    jwks_server.status, jwks_server.body = status, body
    failure = await refusal(jwks_verifier().verify(rs256(keys, "k1"), now=NOW))
    assert (failure.status, failure.reason) == (503, "backend_error")
    assert what in failure.detail


async def test_jwks_private_and_encryption_keys_are_not_used(
    keys: Keys, jwks_server: JwksServer, jwks_verifier: Callable[..., JwtVerifier]
) -> None:
    private = RSAAlgorithm.to_jwk(keys.rsa, as_dict=True) | {"kid": "k1"}
    encryption = jwk(keys.rsa, "k1") | {"use": "enc"}
    jwks_server.document = {"keys": [private, encryption]}
    failure = await refusal(jwks_verifier().verify(rs256(keys, "k1"), now=NOW))
    assert (failure.status, failure.reason) == (503, "backend_error")
    assert "no key usable" in failure.detail


async def test_jwks_server_down_is_a_backend_error(keys: Keys) -> None:
    config = jwt_config(algorithms=["RS256"], jwks_url=f"http://user:pw@127.0.0.1:{unused_port()}/jwks?x=1")
    verifier = JwtVerifier(config, Path("."))
    try:
        failure = await refusal(verifier.verify(rs256(keys, "k1"), now=NOW))
    finally:
        await verifier.close()
    assert (failure.status, failure.reason) == (503, "backend_error")
    assert "pw" not in failure.detail
    assert "x=1" not in failure.detail


async def test_jwks_timeout_is_a_backend_error(keys: Keys, jwks_server: JwksServer) -> None:
    jwks_server.delay = 2.0
    verifier = JwtVerifier(jwt_config(algorithms=["RS256"], jwks_url=jwks_server.url), Path("."), fetch_timeout=0.2)
    started = time.monotonic()
    try:
        failure = await refusal(verifier.verify(rs256(keys, "k1"), now=NOW))
    finally:
        await verifier.close()
    assert (failure.status, failure.reason) == (503, "backend_error")
    assert "did not answer within 0.2s" in failure.detail
    assert time.monotonic() - started < 1.5


async def test_a_failed_jwks_fetch_is_not_repeated_before_the_backoff_whatever_the_traffic(
    keys: Keys, jwks_server: JwksServer, jwks_verifier: Callable[..., JwtVerifier]
) -> None:
    """The issuer answers 500: junk tokens (unknown kids, bad signatures), sequential or
    at once, cause one fetch per backoff interval (1 s, then 2 s, ...), not one each."""
    jwks_server.status = 500
    clock = FakeClock()
    verifier = jwks_verifier(clock)
    junk = [rs256(keys, f"junk{n}", key=keys.rsa_other) for n in range(50)]

    async def refused_all() -> None:
        for token in junk:
            failure = await refusal(verifier.verify(token, now=NOW))
            assert (failure.status, failure.reason) == (503, "backend_error"), failure
            assert "answered HTTP 500" in failure.detail
        failures = await asyncio.gather(*(refusal(verifier.verify(token, now=NOW)) for token in junk))
        assert {f.status for f in failures} == {503}

    await refused_all()
    assert jwks_server.fetches == 1
    clock.now += FIRST_RETRY - 0.01
    await refused_all()
    assert jwks_server.fetches == 1
    clock.now += 0.01  # the first backoff has passed: one more fetch, then twice as long
    await refused_all()
    assert jwks_server.fetches == 2
    clock.now += 2 * FIRST_RETRY - 0.01
    await refused_all()
    assert jwks_server.fetches == 2
    clock.now += 0.01
    await refused_all()
    assert jwks_server.fetches == 3
    for _ in range(10):  # the backoff stops growing at min_refetch_interval (30 s)
        clock.now += 30
        await refused_all()
    assert jwks_server.fetches == 13
    jwks_server.status = 200  # the issuer is back: the next fetch after the backoff succeeds
    clock.now += 30
    assert (await verifier.verify(rs256(keys, "k1"), now=NOW)).user == "alice"
    assert jwks_server.fetches == 14


async def test_jwks_recovers_after_a_failure(
    keys: Keys, jwks_server: JwksServer, jwks_verifier: Callable[..., JwtVerifier]
) -> None:
    clock = FakeClock()
    verifier = jwks_verifier(clock)
    jwks_server.status = 502
    assert (await refusal(verifier.verify(rs256(keys, "k1"), now=NOW))).status == 503
    jwks_server.status = 200
    clock.now += FIRST_RETRY  # the wait after a failed fetch
    assert (await verifier.verify(rs256(keys, "k1"), now=NOW)).user == "alice"


async def test_jwks_uses_a_given_session_and_leaves_it_open(keys: Keys, jwks_server: JwksServer) -> None:
    async with aiohttp.ClientSession() as session:
        config = jwt_config(algorithms=["RS256"], jwks_url=jwks_server.url)
        verifier = JwtVerifier(config, Path("."), session=session)
        await verifier.verify(rs256(keys, "k1"), now=NOW)
        await verifier.close()
        assert not session.closed


# --- backend.py ------------------------------------------------------------------------


@dataclass
class AuthServer:
    url: str = ""
    mode: str = "ok"
    requests: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def auth_server() -> AsyncIterator[AuthServer]:
    server = AuthServer()

    async def check(request: web.Request) -> web.StreamResponse:
        server.requests.append(await request.json())
        mode = server.mode
        if mode == "ok":
            return web.json_response({"user": "bob", "claims": {"role": "mod"}, "expires_at": NOW + 30})
        if mode == "minimal":
            return web.json_response({"user": "bob"})
        if mode == "sleep":
            await server.release.wait()
            return web.json_response({"user": "bob"})
        if mode == "redirect":
            raise web.HTTPFound("/elsewhere")
        if mode.isdigit():
            return web.Response(status=int(mode), text="no")
        return web.Response(body=mode.encode(), content_type="application/json")

    app = web.Application()
    app.router.add_post("/check", check)
    async with serve_app(app) as url:
        server.url = url + "/check"
        yield server
        server.release.set()


@pytest.fixture
async def backend(auth_server: AuthServer) -> AsyncIterator[HttpBackend]:
    made = HttpBackend(HttpBackendConfig(url=auth_server.url, timeout=0.3))
    yield made
    await made.close()


async def test_backend_200_gives_an_identity_and_gets_only_the_forwarded_headers(
    auth_server: AuthServer, backend: HttpBackend
) -> None:
    headers = CIMultiDict([
        ("Host", "gw.example.com"),
        ("Authorization", "Bearer tok-123"),
        ("Cookie", "sid=abc"),
        ("Origin", "https://app.example.com"),
        ("User-Agent", "test/1"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Forwarded-For", "10.0.0.2"),
        ("X-Forwarded-Proto", "https"),
        ("X-Api-Secret", "do-not-forward"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Protocol", "wsgate.auth, wsgate.bearer.tok-123"),
    ])
    hs = handshake("tok-123", headers=headers, query=MultiDict({"room": "lobby"}), remote="192.0.2.7", path="/chat")
    identity = await backend.check(hs)
    assert identity == Identity(user="bob", claims={"role": "mod"}, expires_at=NOW + 30)
    [sent] = auth_server.requests
    assert sent == {
        "path": "/chat",
        "query": {"room": "lobby"},
        "headers": {
            "authorization": "Bearer tok-123",
            "cookie": "sid=abc",
            "origin": "https://app.example.com",
            "user-agent": "test/1",
            "x-forwarded-for": "10.0.0.1, 10.0.0.2",
            "x-forwarded-proto": "https",
        },
        "remote": "192.0.2.7",
        "token": "tok-123",
    }


async def test_backend_minimal_answer(auth_server: AuthServer, backend: HttpBackend) -> None:
    auth_server.mode = "minimal"
    assert await backend.check(handshake(None)) == Identity(user="bob", claims={}, expires_at=None)
    assert auth_server.requests[0]["token"] is None


@pytest.mark.parametrize(("mode", "status", "reason"), [("401", 401, "invalid"), ("403", 403, "forbidden")])
async def test_backend_refusals(
    mode: str, status: int, reason: str, auth_server: AuthServer, backend: HttpBackend
) -> None:
    auth_server.mode = mode
    failure = await refusal(backend.check(handshake("tok")))
    assert (failure.status, failure.reason) == (status, reason)


@pytest.mark.parametrize(
    ("mode", "what"),
    [
        ("500", "answered HTTP 500"),
        ("502", "answered HTTP 502"),
        ("404", "answered HTTP 404"),
        ("204", "answered HTTP 204"),
        ("redirect", "answered HTTP 302"),
        ("not json", "not JSON"),
        ('["bob"]', "not an object"),
        ('{"name": "bob"}', "without a 'user' string"),
        ('{"user": ""}', "without a 'user' string"),
        ('{"user": 7}', "without a 'user' string"),
        ('{"user": "bob", "claims": []}', "'claims' that is not an object"),
        ('{"user": "bob", "expires_at": "soon"}', "'expires_at' that is not a number"),
        ('{"user": "bob", "expires_at": true}', "'expires_at' that is not a number"),
        ('{"user": "bob", "expires_at": NaN}', "'expires_at' that is not a number"),
    ],
)
async def test_backend_errors_fail_closed(mode: str, what: str, auth_server: AuthServer, backend: HttpBackend) -> None:
    auth_server.mode = mode
    failure = await refusal(backend.check(handshake("tok-secret")))
    assert (failure.status, failure.reason) == (503, "backend_error")
    assert what in failure.detail
    assert "tok-secret" not in failure.detail


async def test_backend_timeout(auth_server: AuthServer, backend: HttpBackend) -> None:
    auth_server.mode = "sleep"
    started = time.monotonic()
    failure = await refusal(backend.check(handshake("tok")))
    assert (failure.status, failure.reason) == (503, "backend_error")
    assert "did not answer within 0.3s" in failure.detail
    assert time.monotonic() - started < 2
    assert len(auth_server.requests) == 1  # no retry


async def test_backend_unreachable() -> None:
    made = HttpBackend(HttpBackendConfig(url=f"http://127.0.0.1:{unused_port()}/check"))
    try:
        failure = await refusal(made.check(handshake("tok")))
    finally:
        await made.close()
    assert (failure.status, failure.reason) == (503, "backend_error")
    assert "ClientConnectorError" in failure.detail


async def test_backend_shares_one_session(auth_server: AuthServer, backend: HttpBackend) -> None:
    await backend.check(handshake("a"))
    session = backend._session
    await backend.check(handshake("b"))
    assert session is not None
    assert backend._session is session
    await backend.close()
    assert session.closed


# --- hook.py ---------------------------------------------------------------------------

HOOK_SOURCE = '''
from wsgate.auth import Identity, Refuse

async def allow(handshake):
    return Identity(user="carol", claims={"via": handshake.path})

async def deny(handshake):
    return None

async def forbid(handshake):
    raise Refuse(403, "banned")

async def unauthorized(handshake):
    raise Refuse(401, "who are you")

async def not_found(handshake):
    raise Refuse(404, "no such room")

async def boom(handshake):
    raise RuntimeError(f"could not parse {handshake.token}")

async def odd(handshake):
    return "carol"

async def nobody(handshake):
    return Identity(user="")

def sync(handshake):
    return Identity(user="carol")

class Checker:
    async def __call__(self, handshake):
        return Identity(user="callable")

checker = Checker()
value = 3
'''


@pytest.fixture
def hook_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A hook module beside a (virtual) config.yaml, under a name no other test uses."""
    name = f"authhooks_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(HOOK_SOURCE)
    # PythonHook puts the config folder on sys.path; undo that after the test.
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name
    sys.modules.pop(name, None)


async def test_hook_identity(hook_module: str, tmp_path: Path) -> None:
    hook = PythonHook(f"{hook_module}:allow", tmp_path)
    assert await hook.check(handshake("tok", path="/x")) == Identity(user="carol", claims={"via": "/x"})
    assert (await PythonHook(f"{hook_module}:checker", tmp_path).check(handshake(None))).user == "callable"


async def test_hook_none_is_a_401(hook_module: str, tmp_path: Path) -> None:
    failure = await refusal(PythonHook(f"{hook_module}:deny", tmp_path).check(handshake("tok")))
    assert (failure.status, failure.reason) == (401, "invalid")


@pytest.mark.parametrize(
    ("function", "status", "reason", "text"),
    [("forbid", 403, "forbidden", "banned"), ("unauthorized", 401, "invalid", "who are you"),
     ("not_found", 404, "invalid", "no such room")],
)
async def test_hook_refuse(
    function: str, status: int, reason: str, text: str, hook_module: str, tmp_path: Path
) -> None:
    failure = await refusal(PythonHook(f"{hook_module}:{function}", tmp_path).check(handshake("tok")))
    assert (failure.status, failure.reason) == (status, reason)
    assert text in failure.detail


async def test_hook_exception_fails_closed_without_the_token(hook_module: str, tmp_path: Path) -> None:
    token = "eyJ.secret-token.sig"
    failure = await refusal(PythonHook(f"{hook_module}:boom", tmp_path).check(handshake(token)))
    assert (failure.status, failure.reason) == (503, "backend_error")
    assert "RuntimeError" in failure.detail
    assert "could not parse <token>" in failure.detail
    assert f"{hook_module}.py:" in failure.detail
    assert token not in failure.detail
    assert token not in str(failure)
    assert failure.__cause__ is None
    assert (failure.__context__ is None or failure.__suppress_context__)


@pytest.mark.parametrize("function", ["odd", "nobody"])
async def test_hook_wrong_return_value_fails_closed(function: str, hook_module: str, tmp_path: Path) -> None:
    failure = await refusal(PythonHook(f"{hook_module}:{function}", tmp_path).check(handshake("tok")))
    assert (failure.status, failure.reason) == (503, "backend_error")


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("{m}:sync", "is not an async function"),
        ("{m}:value", "is not an async function"),
        ("{m}:missing", "has no attribute 'missing'"),
        ("no_such_module_xyz:check", "cannot import module 'no_such_module_xyz'"),
        ("{m}", "is not a function reference"),
        (".{m}:allow", "is not a function reference"),
    ],
)
def test_hook_load_errors(ref: str, message: str, hook_module: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        PythonHook(ref.format(m=hook_module), tmp_path)


def test_hook_module_that_raises_on_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    name = f"brokenhook_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text("raise RuntimeError('half-written')\n")
    with pytest.raises(ValueError, match=r"importing .* failed: RuntimeError: half-written"):
        PythonHook(f"{name}:check", tmp_path)


# --- authenticator.py ------------------------------------------------------------------


async def test_jwt_authenticator(tmp_path: Path) -> None:
    config = Authenticator.model_validate({"jwt": {"algorithms": ["HS256"], "secret": SECRET}, "cookie": "sid"})
    auth = build_authenticator("users", config, tmp_path)
    try:
        assert (auth.name, auth.cookie) == ("users", "sid")
        failure = await refusal(auth.authenticate(handshake(None)))
        assert (failure.status, failure.reason) == (401, "missing")
        token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, SECRET)
        assert (await auth.authenticate(handshake(token))).user == "alice"
    finally:
        await auth.close()


async def test_http_authenticator_is_asked_without_a_token(tmp_path: Path, auth_server: AuthServer) -> None:
    auth = build_authenticator("backend", Authenticator.model_validate({"http": {"url": auth_server.url}}), tmp_path)
    try:
        assert auth.cookie is None
        assert (await auth.authenticate(handshake(None))).user == "bob"
        assert auth_server.requests[0]["token"] is None
    finally:
        await auth.close()


async def test_python_authenticator_is_asked_without_a_token(hook_module: str, tmp_path: Path) -> None:
    auth = build_authenticator("hook", Authenticator.model_validate({"python": f"{hook_module}:allow"}), tmp_path)
    assert (await auth.authenticate(handshake(None))).user == "carol"
    await auth.close()


def test_build_authenticator_reports_bad_files(tmp_path: Path) -> None:
    config = Authenticator.model_validate({"jwt": {"algorithms": ["RS256"], "public_key": "nope.pem"}})
    with pytest.raises(ValueError, match="cannot read"):
        build_authenticator("users", config, tmp_path)


# --- the verified-token cache ------------------------------------------------------------

async def test_a_token_seen_before_skips_the_signature_check_but_not_its_expiry(
    monkeypatch: pytest.MonkeyPatch, keys: Keys, key_files: Path
) -> None:
    verifier = JwtVerifier(jwt_config(algorithms=["RS256"], public_key="rsa.pem"), key_files)
    decodes = 0  # signature checks, counted where joserfc makes them
    real_verify = joserfc.jwa.RSAAlgorithm.verify

    def counting_verify(*args: Any, **kwargs: Any) -> Any:
        nonlocal decodes
        decodes += 1
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(joserfc.jwa.RSAAlgorithm, "verify", counting_verify)
    token = rs256(keys, None, exp=int(NOW) + 60)
    for _ in range(3):
        assert (await verifier.verify(token, now=NOW)).user == "alice"
    assert decodes == 1
    failure = await refusal(verifier.verify(token, now=NOW + 61))
    assert (failure.status, failure.reason) == (401, "expired")
    assert (await verifier.verify(rs256(keys, None, exp=int(NOW) + 61), now=NOW)).user == "alice"
    assert decodes == 2


async def test_a_jwks_refetch_forgets_verified_tokens(
    keys: Keys, jwks_server: JwksServer, jwks_verifier: Callable[..., JwtVerifier]
) -> None:
    """The issuer dropped the key: once the key set is refetched, its tokens stop working."""
    clock = FakeClock()
    verifier = jwks_verifier(clock)
    token = rs256(keys, "k1")
    await verifier.verify(token, now=NOW)
    jwks_server.document = {"keys": [jwk(keys.rsa_other, "k2", "RS256")]}
    await verifier.verify(token, now=NOW)  # cached, and the key set is still fresh
    clock.now += 600
    failure = await refusal(verifier.verify(token, now=NOW))
    assert (failure.status, failure.reason) == (401, "invalid")
    assert jwks_server.fetches == 3  # the first, the one at expiry, one more for the now unknown kid
