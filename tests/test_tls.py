"""``server.tls``: the gateway itself serves https and wss, and refuses bad cert/key files.

A throwaway CA signs a certificate for 127.0.0.1; clients trust that CA alone and keep
verification and hostname checks on. Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from conftest import WsgateProcess
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from wsgate.config.models import TlsConfig
from wsgate.tls import server_ssl_context

_HTTPS_LISTENING = r"wsgate listening on https://(\S+?):(\d+)/"


@dataclass(frozen=True)
class Pki:
    """PEM files in one folder: the CA's certificate, a server pair, and a stray key."""

    folder: Path
    ca: Path
    cert: Path
    key: Path
    other_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A test CA and a server certificate it signed for the IP address 127.0.0.1."""
    folder = tmp_path / "tls"
    folder.mkdir()
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wsgate test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(valid[0]).not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = _key()
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(valid[0]).not_valid_after(valid[1])
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Pki(
        folder=folder,
        ca=_write_cert(ca, folder / "ca.pem"),
        cert=_write_cert(server, folder / "server.pem"),
        key=_write_key(server_key, folder / "server.key"),
        other_key=_write_key(_key(), folder / "other.key"),
    )


def _trusting(pki: Pki) -> ssl.SSLContext:
    """A client context that trusts the test CA and nothing else, verification fully on."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    return context


def _config(cert: str, key: str) -> str:
    # Line 3 holds cert, line 4 key: the error tests point at these lines.
    return ("server:\n"
            "  tls:\n"
            f"    cert: {cert}\n"
            f"    key: {key}\n"
            "endpoints:\n"
            "  - {path: /ws, handler: echo}\n")


def _start_tls(start: Callable[..., WsgateProcess], config: Path) -> WsgateProcess:
    """The conftest factory, waiting for the https line instead of the http one."""
    gateway = start(config, wait=False)
    m = gateway.wait_for_line(_HTTPS_LISTENING, timeout=20)
    gateway.host, gateway.port = m.group(1), int(m.group(2))
    assert gateway.host == "127.0.0.1"
    return gateway


@pytest.fixture
def tls_gateway(pki: Pki, write_config: Callable[..., Path],
                wsgate_process: Callable[..., WsgateProcess]) -> WsgateProcess:
    """A wsgate subprocess serving /ws (echo) over TLS, cert paths relative to its config."""
    config = write_config(_config("tls/server.pem", "tls/server.key"))
    return _start_tls(wsgate_process, config)


def _base(gateway: WsgateProcess, scheme: str) -> str:
    return f"{scheme}://127.0.0.1:{gateway.port}"


# --- serving ------------------------------------------------------------------------------


async def test_aiohttp_gets_https_and_wss_with_verification(tls_gateway: WsgateProcess, pki: Pki) -> None:
    context = _trusting(pki)
    async with asyncio.timeout(15), aiohttp.ClientSession() as session:
        async with session.get(_base(tls_gateway, "https") + "/healthz", ssl=context) as resp:
            assert resp.status == 200
            assert resp.url.scheme == "https"
        async with session.ws_connect(_base(tls_gateway, "wss") + "/ws", ssl=context) as ws:
            await ws.send_str("over tls ✓")
            assert await ws.receive_str() == "over tls ✓"
            await ws.send_bytes(b"\x00\xff" * 40_000)
            assert await ws.receive_bytes() == b"\x00\xff" * 40_000


async def test_websockets_echoes_over_wss(tls_gateway: WsgateProcess, pki: Pki) -> None:
    async with asyncio.timeout(15), connect(_base(tls_gateway, "wss") + "/ws", ssl=_trusting(pki)) as conn:
        await conn.send("hello")
        assert await conn.recv() == "hello"
        await conn.send(b"\x01\x02")
        assert await conn.recv() == b"\x01\x02"


async def test_same_origin_means_the_https_origin(tls_gateway: WsgateProcess, pki: Pki) -> None:
    """The default ``same-origin`` policy sees the request's scheme as https."""
    url = _base(tls_gateway, "wss") + "/ws"
    async with asyncio.timeout(15):
        async with connect(url, ssl=_trusting(pki), origin=Origin(_base(tls_gateway, "https"))) as conn:
            await conn.send("ok")
            assert await conn.recv() == "ok"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, ssl=_trusting(pki), origin=Origin(_base(tls_gateway, "http"))):
                pass
    assert refused.value.response.status_code == 403


async def test_default_trust_refuses_the_test_certificate(tls_gateway: WsgateProcess) -> None:
    system_trust = ssl.create_default_context()
    async with asyncio.timeout(15):
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(_base(tls_gateway, "https") + "/healthz", ssl=system_trust)
        with pytest.raises(ssl.SSLCertVerificationError):
            async with connect(_base(tls_gateway, "wss") + "/ws", ssl=system_trust):
                pass


async def test_a_name_the_certificate_does_not_cover_is_refused(tls_gateway: WsgateProcess, pki: Pki) -> None:
    """Hostname checking is really on: the same CA, asked for another name, fails."""
    async with asyncio.timeout(15), aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError, match=r"example\.com"):
            await session.get(_base(tls_gateway, "https") + "/healthz", ssl=_trusting(pki),
                              server_hostname="example.com")


async def test_plain_http_gets_no_answer(tls_gateway: WsgateProcess) -> None:
    async with asyncio.timeout(15), aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            await session.get(_base(tls_gateway, "http") + "/healthz")
    assert tls_gateway.proc.poll() is None


# --- config -------------------------------------------------------------------------------


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_")}
    return subprocess.run([sys.executable, "-m", "wsgate", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=30, check=False)


def test_check_resolves_paths_from_the_config_folder(pki: Pki, write_config: Callable[..., Path],
                                                      tmp_path: Path) -> None:
    config = write_config(_config("tls/server.pem", "tls/server.key"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = _run(["check", "--config", str(config)], elsewhere)
    assert result.returncode == 0, result.stderr
    assert (f"would listen on https://127.0.0.1:8080 (certificate {pki.cert}, key {pki.key})"
            in result.stdout), result.stdout


def test_missing_key_file_is_a_config_error(pki: Pki, write_config: Callable[..., Path]) -> None:
    config = write_config(_config("tls/server.pem", "tls/missing.key"))
    result = _run(["serve", "--config", str(config), "--port", "0"], config.parent)
    assert result.returncode == 2, result
    missing = pki.folder / "missing.key"
    assert result.stderr == (
        f"{config}:4:5: server.tls.key: cannot read private key {missing}: No such file or directory "
        "(a relative path starts from the config file's folder)\n"
    )
    assert "listening" not in result.stdout


def test_missing_cert_and_key_are_both_reported(pki: Pki, write_config: Callable[..., Path]) -> None:
    config = write_config(_config(str(pki.folder / "nope.pem"), str(pki.folder / "nope.key")))
    result = _run(["serve", "--config", str(config), "--port", "0"], config.parent)
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert lines == [
        f"{config}:3:5: server.tls.cert: cannot read certificate {pki.folder / 'nope.pem'}: "
        "No such file or directory",
        f"{config}:4:5: server.tls.key: cannot read private key {pki.folder / 'nope.key'}: "
        "No such file or directory",
    ]


def test_a_key_of_another_certificate_is_a_config_error(pki: Pki, write_config: Callable[..., Path]) -> None:
    config = write_config(_config("tls/server.pem", "tls/other.key"))
    result = _run(["serve", "--config", str(config), "--port", "0"], config.parent)
    assert result.returncode == 2, result
    assert result.stderr == (
        f"{config}:4:5: server.tls.key: the private key {pki.other_key} does not belong to the certificate "
        f"{pki.cert}; use the key the certificate was issued for\n"
    )
    assert "listening" not in result.stdout


@pytest.mark.parametrize(
    ("cert", "key", "expected"),
    [
        ("tls/server.key", "tls/server.key", r":3:5: server\.tls\.cert: no PEM certificate in \S+server\.key"),
        ("tls/server.pem", "tls/server.pem", r":4:5: server\.tls\.key: no PEM private key in \S+server\.pem"),
        ("tls", "tls/server.key", r":3:5: server\.tls\.cert: cannot read certificate \S+tls: Is a directory"),
    ],
    ids=["key-as-cert", "cert-as-key", "folder"],
)
def test_files_that_do_not_load_are_config_errors(pki: Pki, write_config: Callable[..., Path],
                                                  cert: str, key: str, expected: str) -> None:
    config = write_config(_config(cert, key))
    result = _run(["check", "--config", str(config)], config.parent)
    assert result.returncode == 2, result
    assert re.search(expected, result.stderr), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_an_encrypted_key_is_refused_without_a_prompt(pki: Pki, write_config: Callable[..., Path]) -> None:
    key = serialization.load_pem_private_key(pki.key.read_bytes(), None)
    (pki.folder / "locked.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    config = write_config(_config("tls/server.pem", "tls/locked.key"))
    result = _run(["check", "--config", str(config)], config.parent)
    assert result.returncode == 2, result
    assert ":4:5: server.tls.key: the private key " in result.stderr
    assert "is encrypted; wsgate needs it unencrypted" in result.stderr


def test_tls_keys_are_required_and_strict(write_config: Callable[..., Path]) -> None:
    config = write_config("server:\n  tls: {cert: a.pem, pasword: x}\nendpoints:\n  - {path: /ws, handler: echo}\n")
    result = _run(["check", "--config", str(config)], config.parent)
    assert result.returncode == 2, result
    assert "server.tls.key: this key is required" in result.stderr
    assert "server.tls.pasword: unknown key; allowed keys: cert, key" in result.stderr


def test_the_context_refuses_tls_below_1_2(pki: Pki) -> None:
    tls = TlsConfig(cert=Path("server.pem"), key=Path("server.key"))
    context = server_ssl_context(tls, pki.folder)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE  # clients are not asked for certificates


# --- handshake_timeout covers the TLS handshake --------------------------------------------


async def _seconds_until_dropped(port: int, send: bytes, within: float) -> float:
    """Open TCP to ``port``, send ``send`` (maybe nothing), then read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened = asyncio.get_running_loop().time()
    try:
        writer.write(send)
        async with asyncio.timeout(within):
            while await reader.read(4096):
                pass
    except ConnectionResetError:
        pass
    finally:
        writer.close()
    return asyncio.get_running_loop().time() - opened


async def test_a_client_that_never_finishes_the_tls_handshake_is_dropped_after_handshake_timeout(
    pki: Pki, write_config: Callable[..., Path], wsgate_process: Callable[..., WsgateProcess]
) -> None:
    config = write_config(_config("tls/server.pem", "tls/server.key").replace(
        "server:\n", "server:\n  handshake_timeout: 1s\n", 1))
    gateway = _start_tls(wsgate_process, config)
    # a ClientHello record header that promises 512 bytes, then nothing more
    partial_hello = bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
    silent, partial = await asyncio.gather(
        _seconds_until_dropped(gateway.port, b"", within=10),
        _seconds_until_dropped(gateway.port, partial_hello, within=10),
    )
    # 60 s before handshake_timeout covered the TLS handshake
    assert 0.9 < silent < 5, f"a client that sent nothing was held {silent:.1f}s"
    assert 0.9 < partial < 5, f"a client that sent part of a ClientHello was held {partial:.1f}s"
    # past the TLS handshake, a request that never comes has the same bound
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port, ssl=_trusting(pki))
    try:
        async with asyncio.timeout(5):
            assert await reader.read() == b""
    finally:
        writer.close()
    # and the port still serves those who do finish
    async with (asyncio.timeout(15), aiohttp.ClientSession() as session,
                session.get(_base(gateway, "https") + "/healthz", ssl=_trusting(pki)) as resp):
        assert resp.status == 200
