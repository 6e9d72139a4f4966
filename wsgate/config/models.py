"""The shape of config.yaml as pydantic models.

Precedence of a policy key for one endpoint, lowest first: wsgate's default, the
handler's ``policy_defaults``, the top-level ``policy:`` block, the endpoint itself.
A nested block (``heartbeat``, ``rate_limit``) is replaced whole, not merged.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    create_model,
    field_validator,
    model_validator,
)

from ..broker.cluster_url import CLUSTER_SCHEMES, parse_cluster_url
from ..errors import ConfigError
from ..handler import Handler
from ..policy.hosts import parse_host_pattern
from ..policy.origin import parse_origin_pattern
from .auth import Allow, AuthSection
from .base import Duration, Size, StrictModel
from .yamlsource import Located

__all__ = [
    "RESERVED_PATHS",
    "ApiConfig",
    "Config",
    "Endpoint",
    "EndpointSpec",
    "Heartbeat",
    "LoggingConfig",
    "Policy",
    "RateLimit",
    "ServerConfig",
    "Settings",
    "TlsConfig",
]

RESERVED_PATHS = ("/", "/healthz", "/readyz", "/metrics")
MAX_MESSAGE_SIZE = 1 << 30
RESERVED_PREFIXES = ("/static/", "/api/")
_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")


class Heartbeat(StrictModel):
    """Server pings every ``interval``; no pong within ``timeout`` closes. 0 disables."""

    interval: Duration = 20.0
    timeout: Duration = 10.0


class RateLimit(StrictModel):
    """Token bucket: ``messages`` per ``per`` seconds, bursts up to ``burst``."""

    messages: int = Field(gt=0)
    per: Duration = Field(default=1.0, gt=0)
    burst: int | None = Field(default=None, gt=0)


def _check_origins(value: object) -> object:
    if value in ("same-origin", "*"):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        for origin in value:
            parse_origin_pattern(origin)
        return value
    raise ValueError(
        "expected 'same-origin', '*', or a list of origins such as "
        "['https://app.example.com', 'http://localhost:*']"
    )


Origins = Annotated[Literal["same-origin", "*"] | list[str], BeforeValidator(_check_origins)]


class Policy(StrictModel):
    """Per-endpoint connection policy; see the README's config reference."""

    origins: Origins = "same-origin"
    allow_missing_origin: bool = True
    heartbeat: Heartbeat = Heartbeat()
    idle_timeout: Duration = 0.0
    max_message_size: Size = 1024 * 1024
    send_queue: Size = 1024 * 1024
    slow_client: Literal["close", "drop"] = "close"
    max_connections: int | None = Field(default=None, gt=0)
    max_connections_per_ip: int | None = Field(default=None, gt=0)
    rate_limit: RateLimit | None = None
    subprotocols: list[str] = []
    compression: bool = False
    close_timeout: Duration = 5.0
    auth: str | None = None
    allow: Allow | None = None

    @field_validator("max_message_size", "send_queue")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @field_validator("max_message_size")
    @classmethod
    def _parseable(cls, value: int) -> int:
        # aiohttp's frame reader counts message sizes in 32 bits.
        if value > MAX_MESSAGE_SIZE:
            raise ValueError("must be at most 1GiB")
        return value


POLICY_KEYS = tuple(Policy.model_fields)

_EndpointBase = create_model(  # type: ignore[call-overload]
    "_EndpointBase",
    __base__=StrictModel,
    **{name: (Optional[field.rebuild_annotation()], None)  # noqa: UP045
       for name, field in Policy.model_fields.items()},
)


class EndpointSpec(_EndpointBase):
    """One ``endpoints:`` entry: a path, a handler, its options, policy overrides."""

    path: str
    handler: str
    options: dict[str, Any] = {}

    @field_validator("path")
    @classmethod
    def _valid_path(cls, path: str) -> str:
        if not _PATH.match(path):
            raise ValueError(f"{path!r} is not a URL path: it must start with '/', e.g. '/ws'")
        if path in RESERVED_PATHS or path.startswith(RESERVED_PREFIXES):
            raise ValueError(
                f"{path!r} is used by wsgate itself ({', '.join(RESERVED_PATHS)}, "
                f"{', '.join(p + '*' for p in RESERVED_PREFIXES)}); choose another path"
            )
        return path

    def overrides(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in POLICY_KEYS if k in self.model_fields_set}


def _check_host(value: str) -> str:
    if value != "*":
        parse_host_pattern(value)
    return value


class TlsConfig(StrictModel):
    """A PEM certificate chain (leaf first) and its unencrypted private key.

    Relative paths start from the config file's folder; the files are read at start.
    """

    cert: Path
    key: Path


class ServerConfig(StrictModel):
    """Where to listen and how to stop."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    shutdown_timeout: Duration = 10.0
    handshake_timeout: Duration = 10.0
    max_connections: int | None = Field(default=None, gt=0)
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    # None (unset) is not []: it means "loopback names on a loopback bind, else any".
    allowed_hosts: list[Annotated[str, AfterValidator(_check_host)]] | None = None
    tls: TlsConfig | None = None


class ApiConfig(StrictModel):
    """The HTTP API (publish, reload); off unless a token is set."""

    token: str | None = None
    # POST /api/handshake-check, for the page: it tells whoever asks whether a token
    # is valid, so it is off unless asked for (and then limited like a handshake).
    handshake_check: bool = False


class LoggingConfig(StrictModel):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


def _check_broker(value: object) -> object:
    if isinstance(value, str) and value.startswith(CLUSTER_SCHEMES):
        parse_cluster_url(value)  # its ValueError names what is wrong, never the password
        return value
    if value == "memory" or (isinstance(value, str) and value.startswith(("redis://", "rediss://", "unix://"))):
        return value
    raise ValueError("expected 'memory', a Redis URL such as 'redis://127.0.0.1:6379/0' or a Redis Cluster "
                     "URL such as 'redis+cluster://127.0.0.1:7000,127.0.0.1:7001'")


class Config(StrictModel):
    """The whole of config.yaml."""

    server: ServerConfig = ServerConfig()
    auth: AuthSection = {}
    policy: Policy = Policy()
    endpoints: list[EndpointSpec] = Field(min_length=1)
    broker: Annotated[str, BeforeValidator(_check_broker)] = "memory"
    api: ApiConfig = ApiConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _unique_paths(self) -> Config:
        seen: dict[str, int] = {}
        for index, endpoint in enumerate(self.endpoints):
            if endpoint.path in seen:
                raise _LocatedValueError(
                    ("endpoints", index, "path"),
                    f"duplicate path {endpoint.path!r}, already used by endpoints[{seen[endpoint.path]}]",
                )
            seen[endpoint.path] = index
        return self


class _LocatedValueError(ValueError):
    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class Endpoint(BaseModel):
    """An endpoint after resolution: its handler class, its options, its policy."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    path: str
    handler_ref: str
    handler_cls: type[Handler]  # bare: pydantic refuses type[Handler[Any]]
    options: BaseModel
    policy: Policy

    def same_handler(self, other: Endpoint) -> bool:
        return self.handler_cls is other.handler_cls and self.options == other.options


class Settings(BaseModel):
    """A validated config with every endpoint resolved; what the app is built from.

    Only what the text says: what the config names outside itself (authenticators with
    their key files and hooks, the TLS pair) is built by ``wsgate.prepare``, and held by
    the app, not here.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    file: str
    config: Config
    endpoints: tuple[Endpoint, ...]
    source: Located

    @property
    def folder(self) -> Path:
        """The config file's folder: relative paths in the config start here."""
        return Path(self.file).resolve().parent

    def check_deployment(self) -> None:
        """Checks that command-line overrides can break too; raise ConfigError."""
        server = self.config.server
        problems = []
        if server.workers > 1 and self.config.broker == "memory":
            problems.append(self.source.problem(("server", "workers"),
                "several workers need a shared broker: with broker 'memory' each worker would "
                "hold its own chat rooms; set broker to a Redis URL or workers to 1"))
        if server.workers > 1 and server.port == 0:
            problems.append(self.source.problem(("server", "port"),
                "several workers must share one fixed port; port 0 would give each its own"))
        if problems:
            raise ConfigError(problems)
