"""The endpoint table with each endpoint's effective policy, for ``wsgate routes``."""

from __future__ import annotations

import json
from typing import Any

from .config.auth import Authenticator
from .config.models import Endpoint, Settings
from .observe.redact import redact_url
from .policy.hosts import HostPolicy
from .policy.origin import OriginPolicy

__all__ = ["describe_routes"]


def _seconds(value: float) -> str:
    return "off" if not value else f"{value:g}s"


def _bytes(value: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size and value % size == 0:
            return f"{value // size}{unit}"
    return f"{value}B"


def _option_lines(options: dict[str, Any], indent: str) -> list[str]:
    """Every option with its effective value, a line each; a mapping of mappings (a
    handler's namespaces, say) opens a level, so each inner mapping has its line."""
    lines = []
    for key, value in options.items():
        name = key or '""'
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            lines += [f"{indent}{name}:", *_option_lines(value, indent + "  ")]
        else:
            lines.append(f"{indent}{name}: {json.dumps(value, ensure_ascii=False)}")
    return lines


def _describe(endpoint: Endpoint) -> list[str]:
    p = endpoint.policy
    origin = OriginPolicy.from_config(p.origins, p.allow_missing_origin).describe()
    rate = f"{p.rate_limit.messages}/{_seconds(p.rate_limit.per)} burst {p.rate_limit.burst or p.rate_limit.messages}" \
        if p.rate_limit else "off"
    options = endpoint.options.model_dump(mode="json", by_alias=True)  # secrets show as asterisks
    return [
        f"{endpoint.path}  ->  {endpoint.handler_ref} "
        f"({endpoint.handler_cls.__module__}.{endpoint.handler_cls.__qualname__})",
        f"    options:        {'' if options else '(none)'}".rstrip(),
        *_option_lines(options, "      "),
        f"    origins:        {origin}; no Origin header: {'allowed' if p.allow_missing_origin else 'refused'}",
        f"    heartbeat:      ping every {_seconds(p.heartbeat.interval)}, "
        f"pong timeout {_seconds(p.heartbeat.timeout)}",
        f"    idle_timeout:   {_seconds(p.idle_timeout)}",
        f"    limits:         message {_bytes(p.max_message_size)}, send queue {_bytes(p.send_queue)} "
        f"(slow client: {p.slow_client}), connections {p.max_connections or 'unlimited'}, "
        f"per IP {p.max_connections_per_ip or 'unlimited'}",
        f"    rate_limit:     {rate}",
        f"    subprotocols:   {', '.join(p.subprotocols) or '(none)'}; compression: {'on' if p.compression else 'off'}",
        f"    close_timeout:  {_seconds(p.close_timeout)}",
        f"    auth:           {p.auth or 'none (anonymous)'}"
        + (f"; allow: {'; '.join(f'{k} in {v}' for k, v in p.allow.items())}" if p.allow else ""),
    ]


def _authenticator(name: str, spec: Authenticator) -> str:
    """One authenticator, without its secret or any credential in its URLs."""
    if spec.jwt is not None:
        j = spec.jwt
        keys = "secret" if j.secret else f"public key {j.public_key}" if j.public_key else \
            f"JWKS {redact_url(j.jwks_url or '')} (cached {_seconds(j.jwks_cache)})"
        checks = [f"{label} {value}" for label, value in (("audience", j.audience), ("issuer", j.issuer)) if value]
        what = f"jwt {', '.join(j.algorithms)} with the {keys}; user claim {j.user_claim}; " \
               f"leeway {_seconds(j.leeway)}" + "".join(f"; {c}" for c in checks)
    elif spec.http is not None:
        what = f"http POST {redact_url(spec.http.url)} (timeout {_seconds(spec.http.timeout)})"
    else:
        what = f"python {spec.python}"
    cookie = f"; also the cookie {spec.cookie}" if spec.cookie else ""
    return f"  {name}: {what}{cookie}"


def _listen(settings: Settings) -> str:
    server = settings.config.server
    if server.tls is None:
        return f"{server.host}:{server.port}"
    host = f"[{server.host}]" if ":" in server.host else server.host
    # The resolved paths, since relative ones start from the config's folder, not the shell's.
    return (f"https://{host}:{server.port} (certificate {settings.folder / server.tls.cert}, "
            f"key {settings.folder / server.tls.key})")


def describe_routes(settings: Settings) -> str:
    c = settings.config
    lines = [
        f"config {settings.file}: would listen on {_listen(settings)}, "
        f"{c.server.workers} worker(s), broker {redact_url(c.broker)}, API {'on' if c.api.token else 'off'}, "
        f"handshake timeout {_seconds(c.server.handshake_timeout)}, "
        f"shutdown timeout {_seconds(c.server.shutdown_timeout)}, "
        f"connections {c.server.max_connections or 'unlimited'}",
        f"allowed hosts: {HostPolicy.from_config(c.server.allowed_hosts, c.server.host).describe()}; "
        "/healthz and /readyz answer any host",
    ]
    if c.auth:
        lines.append("authenticators (token from Authorization: Bearer, the wsgate.bearer.* subprotocol, "
                     "access_token):")
        lines += [_authenticator(name, spec) for name, spec in c.auth.items()]
    for endpoint in settings.endpoints:
        lines += _describe(endpoint)
    return "\n".join(lines)
