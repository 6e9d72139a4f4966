"""The server's SSL context for ``server.tls``: https and wss without a proxy in front."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import WsgateError

if TYPE_CHECKING:
    from .config.models import TlsConfig

__all__ = ["TlsError", "server_ssl_context"]


class TlsError(WsgateError):
    """The certificate or key cannot be used; ``problems`` pairs ``cert``/``key`` with what to fix."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"server.tls.{key}: {message}" for key, message in problems))


class _Encrypted(Exception):
    pass


def _ask_password() -> str:
    # Without a callback OpenSSL would prompt for the passphrase on the terminal and hang.
    raise _Encrypted


def _unreadable(path: Path, what: str, written: Path) -> str | None:
    """Why ``path`` cannot be opened, or None if it can."""
    try:
        with path.open("rb"):
            return None
    except OSError as exc:
        hint = "" if written.is_absolute() else " (a relative path starts from the config file's folder)"
        return f"cannot read {what} {path}: {exc.strerror or exc}{hint}"


def server_ssl_context(tls: TlsConfig, base: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context for ``tls``, its relative paths taken from ``base``.

    Raises TlsError naming the file at fault, so that a config check can point at the key.
    """
    cert, key = base / tls.cert, base / tls.key
    problems = [(name, message) for name, message in (
        ("cert", _unreadable(cert, "certificate", tls.cert)),
        ("key", _unreadable(key, "private key", tls.key)),
    ) if message]
    if problems:
        raise TlsError(problems)
    # load_cert_chain says only "PEM lib" for a bad file, whichever it is: try the
    # certificate alone first, so the message can name the file to fix.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=cert)
    except ssl.SSLError:
        raise TlsError([("cert", f"no PEM certificate in {cert}: the file must hold "
                                 "-----BEGIN CERTIFICATE----- blocks, the server's own first")]) from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password=_ask_password)
    except _Encrypted:
        raise TlsError([("key", f"the private key {key} is encrypted; wsgate needs it unencrypted, "
                                "e.g. openssl pkey -in KEY -out PLAIN_KEY")]) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsError([("key", f"the private key {key} does not belong to the certificate {cert}; "
                                    "use the key the certificate was issued for")]) from None
        raise TlsError([("key", f"no PEM private key in {key}: the file must hold a "
                                "-----BEGIN PRIVATE KEY----- block (or RSA/EC PRIVATE KEY)")]) from None
    except OSError as exc:  # the files changed since they were opened above
        raise TlsError([("cert", f"cannot read {cert} or {key}: {exc.strerror or exc}")]) from None
    return context
