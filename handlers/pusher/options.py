"""The options of a ``pusher`` endpoint: one Pusher app."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from wsgate import Duration, Size

__all__ = ["PusherOptions", "WebhookEvent", "WebhookOptions"]

WebhookEvent = Literal["channel_occupied", "channel_vacated", "member_added", "member_removed", "client_event",
                       "cache_miss"]
WEBHOOK_EVENTS: list[WebhookEvent] = ["channel_occupied", "channel_vacated", "member_added", "member_removed",
                                      "client_event", "cache_miss"]


class WebhookOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://\S+$", description="where the events are POSTed (http:// or https://)")
    events: list[WebhookEvent] = Field(default_factory=lambda: list(WEBHOOK_EVENTS),
                                       description="the kinds of event sent (default: all six)")
    batch: Duration = Field(default=0.05, le=10, description="events that come within this long go in one POST")
    max_batch: int = Field(default=100, ge=1, le=10000, description="at most this many events in one POST")
    timeout: Duration = Field(default=10.0, gt=0, le=300, description="how long one POST may take")
    backoff: Duration = Field(default=1.0, gt=0, le=60, description="the first wait before a retry; it doubles "
                                                                       "after each failure")
    max_backoff: Duration = Field(default=30.0, gt=0, le=60, description="the longest wait between retries: a "
                                  "receiver that recovers gets the events within this long (plus a timeout)")
    retry_for: Duration = Field(default=600.0, ge=300, description="how long a batch is retried before it is "
                                "dropped (and logged); at least 5 minutes")
    max_pending: int = Field(default=10000, ge=1, le=1_000_000, description="at most this many events wait "
                             "while the receiver is down; beyond it the oldest are dropped (and logged)")


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
    cache_ttl: Duration = Field(default=1800.0, gt=0, le=86400, description="how long a cache channel keeps its "
                                "last event for new subscribers (Pusher: 30 minutes)")
    max_presence_members: int = Field(default=100, ge=1, le=100_000, description="the most members (users) a "
                                      "presence channel has; one more gets pusher:subscription_error")
    subscription_count: bool = Field(default=False, description="send pusher_internal:subscription_count to the "
                                     "subscribers of a channel (not presence) when its count changes (off in Pusher "
                                     "until an app enables it)")
    subscription_count_interval: Duration = Field(default=0.5, ge=0, le=60, description="at most one "
                                                  "subscription_count event per channel and instance this often")
    webhooks: WebhookOptions | None = Field(default=None, description="POST the app's events (channel_occupied, "
                                            "channel_vacated, member_added, member_removed, client_event, cache_miss) "
                                            "to a URL, "
                                            "signed as Pusher signs them")
