"""The ``channels`` handler's options: connection rules, the server API key, namespaces."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from wsgate import Duration

from .proxy import ProxyOptions

__all__ = ["ChannelsOptions", "Namespace"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Namespace(_Strict):
    """The rules of the channels ``ns:...`` (the key ``""``: channels without a namespace)."""

    history: int = Field(default=0, ge=0, le=100_000)
    history_ttl: Duration = Field(default=600.0, gt=0)
    allow_recovery: bool = True
    force_recovery: bool = False
    presence: bool = False
    join_leave: bool = False
    subscribe: Literal["token", "authenticated", "anyone", "proxy"] = "token"
    publish: Literal["none", "subscribers", "authenticated", "proxy"] = "none"
    presence_readers: Literal["none", "subscribers", "anyone"] = "none"
    history_readers: Literal["none", "subscribers", "anyone"] = "none"
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            from jsonschema import Draft202012Validator  # type: ignore[import-untyped]  # ships no hints
            from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped]

            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as exc:
                raise ValueError(f"not a JSON Schema (2020-12): {exc.message}") from None
        return schema


class ChannelsOptions(_Strict):
    """See docs/channels.md. Everything here is checked before the port binds."""

    token_auth: str | None = None
    anonymous: bool = False
    api_key: SecretStr | None = None
    ping_interval: Duration = Field(default=25.0, gt=0)
    pong_timeout: Duration = Field(default=8.0, gt=0)
    expired_close_delay: Duration = Field(default=25.0, ge=0)
    max_channel_length: int = Field(default=255, ge=1, le=65_536)
    max_subscriptions: int = Field(default=128, ge=1)
    presence_ttl: Duration = Field(default=60.0, gt=0)
    proxy: ProxyOptions = ProxyOptions()
    namespaces: dict[str, Namespace] = {"": Namespace()}

    @field_validator("token_auth")
    @classmethod
    def _known_authenticator(cls, name: str | None, info: ValidationInfo) -> str | None:
        known = (info.context or {}).get("authenticators")
        if name is not None and known is not None and name not in known:
            defined = ", ".join(sorted(known)) or "none"
            raise ValueError(f"no authenticator {name!r} in the auth: section (defined: {defined})")
        return name

    @field_validator("namespaces")
    @classmethod
    def _names(cls, namespaces: dict[str, Namespace]) -> dict[str, Namespace]:
        for name in namespaces:
            if ":" in name or "#" in name:
                raise ValueError(f"namespace {name!r}: a namespace name has no ':' or '#'")
        return namespaces

    @model_validator(mode="after")
    def _consistent(self) -> ChannelsOptions:
        if self.pong_timeout >= self.ping_interval:
            raise ValueError("pong_timeout must be shorter than ping_interval")
        for name, ns in self.namespaces.items():
            where = f"namespaces.{name}" if name else 'namespaces.""'
            if ns.subscribe == "proxy" and self.proxy.subscribe is None:
                raise ValueError(f"{where}: subscribe: proxy needs proxy.subscribe (a URL)")
            if ns.publish == "proxy" and self.proxy.publish is None:
                raise ValueError(f"{where}: publish: proxy needs proxy.publish (a URL)")
        return self
