"""JWT verification, library against library, in one process: PyJWT as wsgate called it vs joserfc.

    python -m bench.jwt_libs [--tokens 2000] [--repeat 5] [--profile] [--json F]

For each algorithm (HS256, RS256, ES256, EdDSA) the same ``--tokens`` fresh tokens
(same claims, each with its own ``jti``: nothing can be remembered between them) are
verified, with the checks wsgate applies to a handshake's token: the signature with the
configured algorithm only, ``aud`` and ``iss``, ``exp`` / ``nbf`` / ``iat`` with a
leeway, and the user claim (``sub``) present. The rows:

- ``pyjwt``: ``jwt.decode`` called as wsgate called it before it moved to joserfc
  (aud and iss checked by PyJWT, the time claims and ``sub`` by the same small function
  as the joserfc row);
- ``joserfc``: ``joserfc.jwt.decode`` with the algorithm allow-list, then a
  ``JWTClaimsRegistry`` (aud, iss, sub essential; ``leeway``) checks all the claims;
- ``joserfc+own``: ``joserfc.jwt.decode``, the claims checked by that same small
  function (what ``wsgate.auth.jwt`` does: it checks the time claims itself, against a
  ``now`` it is given);
- ``wsgate``: ``JwtVerifier.verify`` end to end (a fresh verifier per repeat, so its
  cache of verified tokens never hits);
- ``floor``: what no library can avoid: split, base64 (binascii), the signature
  (``hmac`` or cryptography) and ``json.loads`` of the payload.

Reported: µs per token (median of ``--repeat`` passes, the order of the rows rotated
between passes), and each row's speed relative to ``pyjwt`` (> 1 is faster).
``--profile`` adds where PyJWT's decode spends its time: its parts timed alone, and
cProfile's top functions (the profiler adds a fixed cost per call, so it overstates
PyJWT's per-character base64 check; the timed parts do not); and the same parts for
``JwtVerifier.verify`` with HS256.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import cProfile
import hashlib
import hmac
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from wsgate.auth.b64url import b64url_decode
from wsgate.auth.jwt import JwtVerifier
from wsgate.config.auth import JwtConfig

ALGORITHMS = ("HS256", "RS256", "ES256", "EdDSA")
SECRET = "bench-jwt-secret-0123456789abcdef0123"
AUDIENCE = "bench-aud"
ISSUER = "https://issuer.bench.invalid/"
LEEWAY = 30
TOTAL = "decode as wsgate called it, and the claim checks"
ROWS = ("pyjwt", "joserfc", "joserfc+own", "wsgate", "floor")

Verify = Callable[[str], Mapping[str, Any]]


def keys(alg: str) -> tuple[Any, Any, bytes]:
    """(signing key for PyJWT's encode, public key object, public key PEM or secret bytes)."""
    if alg == "HS256":
        return SECRET, SECRET.encode(), SECRET.encode()
    private: Any
    if alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    public = private.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public, pem


def mint(alg: str, private: Any, count: int) -> list[str]:
    now = int(time.time())
    claims = {"sub": "bench-user", "aud": AUDIENCE, "iss": ISSUER, "iat": now, "nbf": now, "exp": now + 3600,
              "role": "bench"}
    return [jwt.encode({**claims, "jti": f"t{i}"}, private, algorithm=alg) for i in range(count)]


def own_checks(claims: Mapping[str, Any], now: float) -> Mapping[str, Any]:
    """The claim checks wsgate makes itself (time claims with leeway, the user claim)."""
    if (exp := claims.get("exp")) is not None and exp <= now - LEEWAY:
        raise ValueError("expired")
    for name in ("nbf", "iat"):
        if (value := claims.get(name)) is not None and value > now + LEEWAY:
            raise ValueError(f"{name} in the future")
    if not isinstance(claims.get("sub"), str):
        raise ValueError("no sub")
    return claims


def pyjwt_verify(alg: str, key: Any) -> Verify:
    options: Any = {"verify_aud": True, "verify_exp": False, "verify_nbf": False, "verify_iat": False}
    algorithms = [alg]

    def verify(token: str) -> Mapping[str, Any]:
        claims = jwt.decode(token, key, algorithms=algorithms, options=options, audience=AUDIENCE, issuer=ISSUER)
        return own_checks(claims, time.time())

    return verify


def jose_key(alg: str, material: bytes) -> Any:
    if alg == "HS256":
        return OctKey.import_key(material)
    return {"RS256": RSAKey, "ES256": ECKey, "EdDSA": OKPKey}[alg].import_key(material)


def joserfc_verify(alg: str, material: bytes) -> Verify:
    key = jose_key(alg, material)
    algorithms = [alg]
    claims_registry = jose_jwt.JWTClaimsRegistry(
        leeway=LEEWAY, aud={"essential": True, "value": AUDIENCE}, iss={"essential": True, "value": ISSUER},
        sub={"essential": True},
    )

    def verify(token: str) -> Mapping[str, Any]:
        claims = jose_jwt.decode(token, key, algorithms=algorithms).claims
        claims_registry.validate(claims)
        return claims

    return verify


def joserfc_own_verify(alg: str, material: bytes) -> Verify:
    key = jose_key(alg, material)
    algorithms = [alg]

    def verify(token: str) -> Mapping[str, Any]:
        claims = jose_jwt.decode(token, key, algorithms=algorithms).claims
        if claims.get("aud") != AUDIENCE or claims.get("iss") != ISSUER:
            raise ValueError("aud or iss")
        return own_checks(claims, time.time())

    return verify


def wsgate_verifier(alg: str, material: bytes, folder: Path) -> JwtVerifier:
    if alg.startswith("HS"):
        config = JwtConfig(algorithms=[alg], secret=material.decode(), audience=AUDIENCE, issuer=ISSUER,
                           leeway=LEEWAY)
    else:
        (folder / f"{alg}.pem").write_bytes(material)
        config = JwtConfig(algorithms=[alg], public_key=f"{alg}.pem", audience=AUDIENCE, issuer=ISSUER,
                           leeway=LEEWAY)
    return JwtVerifier(config, folder)


def run_verify(verifier: JwtVerifier, token: str) -> Mapping[str, Any]:
    # Without a JWKS, verify() never suspends: driving the coroutine by hand keeps an
    # event loop's per-call cost out of the figure.
    coro = verifier.verify(token)
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value.claims  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("JwtVerifier.verify suspended without a JWKS")


def floor_verify(alg: str, public: Any) -> Verify:
    """Split, base64, signature and JSON with no checks around them: the least any library does."""
    def b64(segment: str) -> bytes:
        return binascii.a2b_base64(segment.replace("-", "+").replace("_", "/") + "==")

    def verify(token: str) -> Mapping[str, Any]:
        header, payload, signature = token.split(".")
        signing_input = f"{header}.{payload}".encode()
        sig = b64(signature)
        if alg == "HS256":
            if not hmac.compare_digest(hmac.new(public, signing_input, hashlib.sha256).digest(), sig):
                raise ValueError("signature")
        elif alg == "RS256":
            public.verify(sig, signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "ES256":
            der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
            public.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
        else:
            public.verify(sig, signing_input)
        claims: dict[str, Any] = json.loads(b64(payload))
        return claims

    return verify


def check_rejects(name: str, verify: Verify, token: str) -> None:
    """A row that accepts a tampered token would be measuring nothing."""
    header, payload, signature = token.split(".")
    forged = base64.urlsafe_b64encode(
        json.dumps({**json.loads(base64.urlsafe_b64decode(payload + "==")), "sub": "admin"}).encode()
    ).rstrip(b"=").decode()
    try:
        verify(f"{header}.{forged}.{signature}")
    except Exception:  # each library has its own error type; any refusal will do
        return
    raise RuntimeError(f"{name} accepted a token whose payload was changed")


def time_pass(verify: Verify, tokens: list[str]) -> float:
    """µs of CPU per token for one pass over ``tokens``."""
    start = time.process_time()
    for token in tokens:
        verify(token)
    return (time.process_time() - start) * 1e6 / len(tokens)


def measure_alg(alg: str, count: int, repeat: int, folder: Path) -> dict[str, Any]:
    private, public, material = keys(alg)
    tokens = mint(alg, private, count)
    makers: dict[str, Callable[[], Verify]] = {
        "pyjwt": lambda: pyjwt_verify(alg, public),
        "joserfc": lambda: joserfc_verify(alg, material),
        "joserfc+own": lambda: joserfc_own_verify(alg, material),
        "wsgate": lambda: (lambda v: lambda token: run_verify(v, token))(wsgate_verifier(alg, material, folder)),
        "floor": lambda: floor_verify(alg, public),
    }
    for name, make in makers.items():
        verify = make()
        assert verify(tokens[0])["jti"] == "t0", name
        if name != "floor":
            check_rejects(name, make(), tokens[0])
    samples: dict[str, list[float]] = {name: [] for name in ROWS}
    for rnd in range(repeat):
        for name in ROWS[rnd % len(ROWS):] + ROWS[:rnd % len(ROWS)]:
            samples[name].append(time_pass(makers[name](), tokens))
    us = {name: statistics.median(values) for name, values in samples.items()}
    return {"us_per_token": us, "speed_vs_pyjwt": {name: us["pyjwt"] / us[name] for name in ROWS},
            "samples_us": samples}


def pyjwt_parts(count: int, repeat: int) -> dict[str, float]:
    """PyJWT's HS256 decode for wsgate, timed part by part (µs per token, no profiler;
    median of ``repeat`` passes, the parts in rotated order)."""
    private, public, _ = keys("HS256")
    tokens = mint("HS256", private, count)
    jws = jwt.api_jws.PyJWS()
    alg_obj = jws.get_algorithm_by_name("HS256")
    loaded = [jws._load(token) for token in tokens]
    prepared = alg_obj.prepare_key(public)
    full = pyjwt_verify("HS256", public)
    steps: dict[str, Callable[[int], object]] = {
        TOTAL: lambda i: full(tokens[i]),
        "_load: split, base64 with a per-character alphabet check, json.loads of the header":
            lambda i: jws._load(tokens[i]),
        "prepare_key (PEM/SSH look-alike checks on the secret, every call)": lambda i: alg_obj.prepare_key(public),
        "the HMAC itself and compare_digest": lambda i: alg_obj.verify(loaded[i][1], prepared, loaded[i][3]),
        "json.loads of the payload": lambda i: json.loads(loaded[i][0]),
    }
    names = list(steps)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rnd in range(repeat):
        for name in names[rnd % len(names):] + names[:rnd % len(names)]:
            step = steps[name]
            start = time.process_time()
            for i in range(count):
                step(i)
            samples[name].append((time.process_time() - start) * 1e6 / count)
    parts = {name: statistics.median(values) for name, values in samples.items()}
    parts["the rest: options, aud and iss, exceptions set up, calls"] = parts[TOTAL] - sum(
        v for k, v in parts.items() if k != TOTAL
    )
    return parts


def timed_parts(steps: dict[str, Callable[[], Callable[[int], object]]], count: int, repeat: int) -> dict[str, float]:
    """µs per token of each step (a factory, called once per pass), median of ``repeat``
    passes over ``count`` tokens, the steps in rotated order; no profiler."""
    names = list(steps)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rnd in range(repeat):
        for name in names[rnd % len(names):] + names[:rnd % len(names)]:
            step = steps[name]()
            start = time.process_time()
            for i in range(count):
                step(i)
            samples[name].append((time.process_time() - start) * 1e6 / count)
    return {name: statistics.median(values) for name, values in samples.items()}


WSGATE_TOTAL = "JwtVerifier.verify, end to end (a new verifier per pass)"


def wsgate_parts(count: int, repeat: int, folder: Path) -> dict[str, float]:
    """``JwtVerifier.verify`` with HS256 and fresh tokens, timed part by part."""
    private, _, material = keys("HS256")
    tokens = mint("HS256", private, count)
    verifier = wsgate_verifier("HS256", material, folder)
    key = verifier._key
    assert key is not None
    parsed = [verifier._parse(token) for token in tokens]
    steps: dict[str, Callable[[], Callable[[int], object]]] = {
        WSGATE_TOTAL: lambda: (lambda v: lambda i: run_verify(v, tokens[i]))(
            wsgate_verifier("HS256", material, folder)),
        "_parse: split, size limits, the header (checked once, then remembered by its segment)":
            lambda: lambda i: verifier._parse(tokens[i]),
        "the signature: base64url, joserfc's HMAC model": lambda: lambda i: verifier._check_signature(
            "HS256", parsed[i][1], parsed[i][3], key, tokens[i]),
        "the payload: base64url, json.loads": lambda: lambda i: json.loads(b64url_decode(parsed[i][2]).decode()),
    }
    parts = timed_parts(steps, count, repeat)
    parts["the rest: claims, time claims, the Identity, the cache, the coroutine"] = parts[WSGATE_TOTAL] - sum(
        v for k, v in parts.items() if k != WSGATE_TOTAL
    )
    return parts


def pyjwt_profile(count: int) -> str:
    private, public, _ = keys("HS256")
    tokens = mint("HS256", private, count)
    verify = pyjwt_verify("HS256", public)
    profile = cProfile.Profile(time.process_time)
    profile.enable()
    for token in tokens:
        verify(token)
    profile.disable()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(10)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    return "\n".join(line.replace(str(Path(jwt.__file__).parent.parent) + "/", "") for line in lines[2:])


def measure(count: int, repeat: int, profile: bool) -> dict[str, Any]:
    result: dict[str, Any] = {
        "tokens": count, "repeat": repeat,
        "versions": {name: metadata.version(name) for name in ("PyJWT", "joserfc", "cryptography")},
        "python": sys.version.split()[0],
    }
    with tempfile.TemporaryDirectory(prefix="wsgate-bench-jwt-") as tmp:
        for alg in ALGORITHMS:
            result[alg] = measure_alg(alg, count, repeat, Path(tmp))
            print(f"  {alg}: " + ", ".join(f"{n} {v:.1f}" for n, v in result[alg]["us_per_token"].items()) + " µs",
                  file=sys.stderr)
    if profile:
        result["pyjwt_parts_us"] = pyjwt_parts(count, repeat)
        result["pyjwt_profile"] = pyjwt_profile(count)
        with tempfile.TemporaryDirectory(prefix="wsgate-bench-jwt-") as tmp:
            result["wsgate_parts_us"] = wsgate_parts(count, repeat, Path(tmp))
    return result


def report(result: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    lines = [f"{result['tokens']} fresh tokens per pass, median of {result['repeat']} passes; "
             f"CPU µs per token (speed vs pyjwt); Python {result['python']}, {versions}",
             f"{'alg':<6} " + " ".join(f"{name:>18}" for name in ROWS)]
    for alg in ALGORITHMS:
        r = result[alg]
        lines.append(f"{alg:<6} " + " ".join(
            f"{r['us_per_token'][n]:>9.1f} ({r['speed_vs_pyjwt'][n]:4.2f}x)" for n in ROWS))
    if "pyjwt_parts_us" in result:
        lines.append("\nPyJWT's HS256 decode, part by part (µs per token):")
        lines += [f"  {v:6.1f}  {k}" for k, v in result["pyjwt_parts_us"].items()]
        lines.append("\ncProfile of the same decode (CPU clock; top 10 by own time):")
        lines.append(result["pyjwt_profile"])
        lines.append("\nwsgate's HS256 JwtVerifier.verify, part by part (µs per token):")
        lines += [f"  {v:6.1f}  {k}" for k, v in result["wsgate_parts_us"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jwt_libs", description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000, help="fresh tokens per algorithm")
    parser.add_argument("--repeat", type=int, default=5, help="passes over the tokens per row")
    parser.add_argument("--profile", action="store_true",
                        help="also show where PyJWT's and wsgate's HS256 checks spend their time")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = measure(args.tokens, args.repeat, args.profile)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
