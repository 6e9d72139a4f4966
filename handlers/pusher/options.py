"""The options of a ``pusher`` endpoint: one Pusher app."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from wsgate import Duration, Size

__all__ = ["PusherOptions"]


class PusherOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    app_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$",
                        description="the app's id: the HTTP API is served under /apps/<app_id>/")
    key: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$",
                     description="the app's public key; the endpoint's path ends with /app/<key>")
    secret: SecretStr = Field(min_length=1, description="the app's secret, which signs subscriptions and API "
                                                        "requests; write \"${VAR}\" to read it from the environment")
    activity_timeout: Duration = Field(default=120.0, ge=1, le=3600, description="told to clients (in whole seconds) "
                                       "in connection_established: a client pings after this long without a message")
    client_events: bool = Field(default=False, description="let clients trigger client- events on private and "
                                                            "presence channels (off in Pusher until an app enables it)")
    client_event_rate: float = Field(default=10.0, gt=0, description="client events per second per connection; "
                                     "more get pusher:error 4301")
    max_event_size: Size = Field(default=10 * 1024, ge=1, le=1024 * 1024,
                                 description="the largest event data, from a client or the HTTP API (413)")
    timestamp_window: Duration = Field(default=600.0, gt=0, description="how far an API request's auth_timestamp "
                                       "may be from the server's clock")
    presence_ttl: Duration = Field(default=60.0, gt=0, description="how long the subscriptions and members of an "
                                   "instance that died outlive it")
