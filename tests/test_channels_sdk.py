"""centrifuge-python, as its README uses it, against a real wsgate running the ``channels`` handler.

The SDK is Centrifugal's own Python client; publications come from the server API through
``cent``. Every wait is bounded: a client event that does not come fails the test.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import cent
import channels_kit
import jwt
import pytest
from aiohttp import web
from centrifuge import (
    ClientState,
    ReplyError,
    StreamPosition,
)
from channels_kit import SdkClients, SubEvents, subscribed, until
from conftest import WsgateProcess, free_port, serve_app

SECRET = "channels-sdk-secret-0123456789abcdef"
API_KEY = "channels-sdk-api-key-5f0c2b"
PATH = "/connection/websocket"
WITHIN = 5.0


def config(*, rpc: str | None = None, **options: Any) -> dict[str, Any]:
    """One ``channels`` endpoint on the memory broker with the namespaces the tests use."""
    opts: dict[str, Any] = {
        "token_auth": "app-jwt",
        "api_key": "${CHANNELS_API_KEY}",
        "namespaces": {
            "": {"subscribe": "authenticated", "publish": "subscribers", "presence": True, "join_leave": True,
                 "presence_readers": "subscribers", "history_readers": "subscribers", "history": 100},
            "rec": {"subscribe": "authenticated", "history": 100, "force_recovery": True,
                    "history_readers": "subscribers"},
            "ro": {"subscribe": "authenticated", "publish": "none"},
            "priv": {"subscribe": "token", "history": 10},
            "srv": {"subscribe": "token", "history": 10},
        },
        **options,
    }
    if rpc is not None:
        opts["proxy"] = {"rpc": rpc, "timeout": "2s"}
    return {
        "server": {"host": "127.0.0.1"},
        "auth": {"app-jwt": {"jwt": {"algorithms": ["HS256"], "secret": "${JWT_SECRET}"}}},
        "endpoints": [{"path": PATH, "handler": "channels", "origins": "*", "options": opts}],
    }


ENV = {"JWT_SECRET": SECRET, "CHANNELS_API_KEY": API_KEY}


token = functools.partial(channels_kit.token, SECRET)


class Kit(SdkClients):
    """A running wsgate, and the SDK clients and ``cent`` client of one test."""

    def __init__(self, start: Callable[..., WsgateProcess], write_config: Callable[..., Path]) -> None:
        super().__init__()
        self._start = start
        self._write = write_config
        self.proc: WsgateProcess | None = None
        self.cent: cent.AsyncClient | None = None

    def start(self, port: int = 0, **options: Any) -> WsgateProcess:
        self.proc = self._start(self._write(config(**options)), env=ENV, port=port)
        self.ws_url = f"{self.proc.ws_url}{PATH}"
        return self.proc

    @property
    def api(self) -> cent.AsyncClient:
        assert self.proc is not None
        if self.cent is None:
            self.cent = cent.AsyncClient(f"{self.proc.url}{PATH}/api", API_KEY, timeout=WITHIN)
        return self.cent

    async def publish(self, channel: str, data: Any) -> int:
        return (await self.api.publish(cent.PublishRequest(channel=channel, data=data))).offset

    subscribed = staticmethod(subscribed)

    async def close(self) -> None:
        await self.disconnect_all()
        if self.cent is not None:
            await self.cent.close()


@pytest.fixture
async def kit(wsgate_process: Callable[..., WsgateProcess],
              write_config: Callable[..., Path]) -> AsyncIterator[Kit]:
    made = Kit(wsgate_process, write_config)
    try:
        yield made
    finally:
        async with asyncio.timeout(10):
            await made.close()


# --- publications -------------------------------------------------------------------------


async def test_publications_arrive_in_order_with_increasing_offsets(kit: Kit) -> None:
    kit.start()
    client, _ = await kit.connected(token("alice"))
    channels = ["rec:a", "rec:b", "chat"]
    subs = {ch: await kit.subscribed(client, ch) for ch in channels}
    assert client.state is ClientState.CONNECTED
    for i in range(1, 6):
        for ch in channels:
            assert await kit.publish(ch, {"ch": ch, "n": i}) == i
    for ch, (_, events) in subs.items():
        await until(lambda events=events: len(events.pubs) >= 5, f"5 publications on {ch}")
        assert events.data() == [{"ch": ch, "n": i} for i in range(1, 6)]
        assert events.offsets() == [1, 2, 3, 4, 5]


# --- recovery -----------------------------------------------------------------------------


async def test_recovery_after_a_force_reconnect_delivers_exactly_the_missed(kit: Kit) -> None:
    kit.start()
    client, cevents = await kit.connected(token("alice"))
    _, events = await kit.subscribed(client, "rec:feed")
    first = events.subscribed[0]
    assert first.recoverable
    assert first.positioned
    assert not first.was_recovering
    assert first.stream_position is not None
    assert first.stream_position.epoch
    for i in range(1, 4):
        await kit.publish("rec:feed", i)
    await until(lambda: len(events.pubs) == 3, "3 live publications")

    async def publish_while_away() -> None:  # runs after the close, before the SDK reconnects
        for i in range(4, 8):
            await kit.publish("rec:feed", i)

    cevents.on_reconnecting = publish_while_away
    await kit.api.disconnect(cent.DisconnectRequest(user="alice",
                                                    disconnect=cent.Disconnect(code=3011, reason="force reconnect")))
    await until(lambda: len(events.subscribed) == 2, "the resubscribe")
    await until(lambda: len(events.pubs) >= 7, "the missed publications")
    await kit.publish("rec:feed", 8)
    await until(lambda: len(events.pubs) >= 8, "a live publication after recovery")

    assert [c.code for c in cevents.connecting if c.code >= 3000] == [3011]
    again = events.subscribed[1]
    assert again.was_recovering
    assert again.recovered
    assert again.stream_position is not None
    assert again.stream_position.epoch == first.stream_position.epoch
    assert events.data() == list(range(1, 9))
    assert events.offsets() == list(range(1, 9))
    assert cevents.disconnected == []


async def test_a_gateway_restart_is_not_recovered_and_starts_a_new_epoch(kit: Kit) -> None:
    port = free_port()
    proc = kit.start(port=port)
    client, cevents = await kit.connected(token("alice"))
    _, events = await kit.subscribed(client, "rec:feed")
    for i in range(1, 3):
        await kit.publish("rec:feed", i)
    await until(lambda: len(events.pubs) == 2, "2 publications")
    epoch = events.subscribed[0].stream_position.epoch  # type: ignore[union-attr]

    await asyncio.to_thread(proc.stop)  # off the loop: the SDK answers the close meanwhile
    await until(lambda: client.state is not ClientState.CONNECTED, "the client to see the gateway go")
    # Centrifugo closes its clients with 3001 "shutdown" when it stops: its SDKs reconnect.
    assert [(c.code, c.reason) for c in cevents.connecting[1:]] == [(3001, "shutdown")]
    kit.start(port=port)
    await until(lambda: len(events.subscribed) == 2, "the resubscribe after the restart", within=10)
    again = events.subscribed[1]
    assert again.was_recovering
    assert not again.recovered
    assert again.stream_position is not None
    assert again.stream_position.epoch not in ("", epoch)
    assert await kit.publish("rec:feed", "after") == 1
    await until(lambda: len(events.pubs) == 3, "a publication after the restart")
    assert events.data() == [1, 2, "after"]
    assert cevents.disconnected == []


# --- presence, join/leave, history --------------------------------------------------------


async def test_join_leave_and_presence(kit: Kit) -> None:
    kit.start()
    alice, _ = await kit.connected(token("alice", info={"name": "Alice"}))
    asub, aev = await kit.subscribed(alice, "chat", join_leave=True)
    bob, _ = await kit.connected(token("bob", info={"name": "Bob"}))
    bsub, _ = await kit.subscribed(bob, "chat", join_leave=True)
    bob2, _ = await kit.connected(token("bob"))
    await kit.subscribed(bob2, "chat")

    await until(lambda: len([j for j in aev.joins if j.info.user == "bob"]) >= 2, "bob's two joins")
    joined = [(j.info.user, j.info.conn_info) for j in aev.joins if j.info.user == "bob"]
    assert joined == [("bob", {"name": "Bob"}), ("bob", None)]

    presence = await asub.presence()
    users = sorted((c.user, c.conn_info == {"name": c.user.title()}) for c in presence.clients.values())
    assert users == [("alice", True), ("bob", False), ("bob", True)]
    assert all(cid == info.client for cid, info in presence.clients.items())
    stats = await asub.presence_stats()
    assert (stats.num_clients, stats.num_users) == (3, 2)

    await bsub.unsubscribe()
    await until(lambda: len(aev.leaves) == 1, "bob's leave")
    assert aev.leaves[0].info.user == "bob"
    assert aev.leaves[0].info.conn_info == {"name": "Bob"}
    stats = await asub.presence_stats()
    assert (stats.num_clients, stats.num_users) == (2, 2)


async def test_history_limit_since_reverse(kit: Kit) -> None:
    kit.start()
    client, _ = await kit.connected(token("alice"))
    sub, _ = await kit.subscribed(client, "chat")
    for i in range(1, 6):
        await kit.publish("chat", {"n": i})

    top = await sub.history()
    assert top.publications == []
    assert top.offset == 5
    assert top.epoch
    epoch = top.epoch

    def ns(result: Any) -> list[int]:
        return [p.data["n"] for p in result.publications]

    assert ns(await sub.history(limit=2)) == [1, 2]
    assert ns(await sub.history(limit=-1)) == [1, 2, 3, 4, 5]
    assert ns(await sub.history(limit=10, since=StreamPosition(2, epoch))) == [3, 4, 5]
    assert ns(await sub.history(limit=2, reverse=True)) == [5, 4]
    assert ns(await sub.history(limit=10, since=StreamPosition(4, epoch), reverse=True)) == [3, 2, 1]
    got = await sub.history(limit=1, since=StreamPosition(3, epoch))
    assert [p.offset for p in got.publications] == [4]
    assert got.offset == 5
    assert got.epoch == epoch
    with pytest.raises(ReplyError) as err:
        await sub.history(limit=10, since=StreamPosition(1, epoch + "x"))
    assert err.value.code == 112


# --- client publish -----------------------------------------------------------------------


async def test_client_publish_allowed_and_refused(kit: Kit) -> None:
    kit.start()
    alice, _ = await kit.connected(token("alice", info={"n": 1}))
    bob, _ = await kit.connected(token("bob"))
    asub, _ = await kit.subscribed(alice, "chat")
    _, bev = await kit.subscribed(bob, "chat")
    await asub.publish({"text": "hi"})
    await until(lambda: len(bev.pubs) == 1, "alice's publication at bob")
    pub = bev.pubs[0].pub
    assert pub.data == {"text": "hi"}
    assert pub.offset == 1
    assert pub.info is not None
    assert pub.info.user == "alice"
    assert pub.info.conn_info == {"n": 1}

    rsub, _ = await kit.subscribed(alice, "ro:news")
    with pytest.raises(ReplyError) as err:
        await rsub.publish({"text": "no"})
    assert err.value.code == 103
    with pytest.raises(ReplyError) as err:  # publish: subscribers, and bob is not one
        await bob.publish("chat2", {"text": "no"})
    assert err.value.code == 103
    assert alice.state is ClientState.CONNECTED
    assert bob.state is ClientState.CONNECTED


# --- tokens -------------------------------------------------------------------------------


async def test_connection_token_refresh_keeps_the_connection(kit: Kit) -> None:
    kit.start(expired_close_delay="1s")
    fresh: list[float] = []

    async def get_token() -> str:
        fresh.append(time.time())
        return token("alice", ttl=3)

    first = token("alice", ttl=3)
    exp = jwt.decode(first, options={"verify_signature": False})["exp"]
    client, cevents = await kit.connected(first, get_token=get_token)
    _, events = await kit.subscribed(client, "chat")
    # Past the first token's expiry and the close delay: still the first connection.
    await until(lambda: time.time() > exp + 2.2, "the first token's expiry", within=8)
    assert fresh, "the SDK never asked for a fresh token"
    assert client.state is ClientState.CONNECTED
    assert len(cevents.connected) == 1
    assert cevents.connecting[1:] == []
    assert cevents.disconnected == []
    await kit.publish("chat", "still here")
    await until(lambda: events.data() == ["still here"], "a publication after the refresh")


async def test_connection_without_refresh_is_closed_as_expired(kit: Kit) -> None:
    """The counterpart of the refresh test: without get_token the connection does end."""
    kit.start(expired_close_delay="0s")
    _client, cevents = await kit.connected(token("alice", ttl=2))
    await until(lambda: any(c.code == 3005 for c in cevents.connecting) or
                any(d.code == 3005 for d in cevents.disconnected), "the 3005 close", within=8)


async def test_private_channel_with_a_subscription_token(kit: Kit) -> None:
    kit.start()
    alice, _ = await kit.connected(token("alice"))
    sub, events = await kit.subscribed(alice, "priv:room",
                                       token=token("alice", channel="priv:room", info={"role": "owner"}))
    await kit.publish("priv:room", "secret")
    await until(lambda: events.data() == ["secret"], "the private publication")
    assert sub.state.value == "subscribed"

    plain = SubEvents()
    nosub = alice.new_subscription("priv:other", plain)
    await nosub.subscribe()
    await until(lambda: len(plain.unsubscribed) == 1, "the refusal without a token")
    assert plain.unsubscribed[0].code == 103
    assert alice.state is ClientState.CONNECTED


@pytest.mark.parametrize("claims", [{"sub": "alice", "channel": "priv:other"},
                                    {"sub": "mallory", "channel": "priv:room"}],
                         ids=["another-channel", "another-user"])
async def test_a_subscription_token_for_something_else_closes_3500(kit: Kit, claims: dict[str, str]) -> None:
    kit.start()
    alice, cevents = await kit.connected(token("alice"))
    bob, _ = await kit.connected(token("bob"))
    wrong = token(claims["sub"], channel=claims["channel"])
    sub = alice.new_subscription("priv:room", SubEvents(), token=wrong)
    await sub.subscribe()
    await until(lambda: len(cevents.disconnected) == 1, "the server's close")
    assert cevents.disconnected[0].code == 3500
    assert alice.state is ClientState.DISCONNECTED
    assert bob.state is ClientState.CONNECTED


# --- server-side subscriptions ------------------------------------------------------------


async def test_server_side_subscriptions_from_the_channels_claim(kit: Kit) -> None:
    kit.start()
    _client, cevents = await kit.connected(token("alice", channels=["srv:alerts", "chat"]))
    await until(lambda: len(cevents.server_subscribed) == 2, "two server-side subscriptions")
    by_channel = {s.channel: s for s in cevents.server_subscribed}
    assert set(by_channel) == {"srv:alerts", "chat"}
    assert by_channel["srv:alerts"].recoverable
    await kit.publish("srv:alerts", {"a": 1})
    await kit.publish("chat", {"c": 1})
    await kit.publish("srv:alerts", {"a": 2})
    await until(lambda: len(cevents.server_pubs) == 3, "3 server-side publications")
    got = [(p.channel, p.pub.data, p.pub.offset) for p in cevents.server_pubs]
    assert got == [("srv:alerts", {"a": 1}, 1), ("chat", {"c": 1}, 1), ("srv:alerts", {"a": 2}, 2)]


# --- server API disconnect ----------------------------------------------------------------


async def test_disconnect_by_user_ends_only_that_users_connections(kit: Kit) -> None:
    kit.start()
    _alice1, a1 = await kit.connected(token("alice"))
    _alice2, a2 = await kit.connected(token("alice"))
    bob, bev = await kit.connected(token("bob"))
    _, bsub = await kit.subscribed(bob, "chat")
    await kit.api.disconnect(cent.DisconnectRequest(user="alice"))
    await until(lambda: len(a1.disconnected) == 1 and len(a2.disconnected) == 1, "both of alice's closes")
    assert [d.code for d in a1.disconnected + a2.disconnected] == [3503, 3503]
    await kit.publish("chat", "for bob")
    await until(lambda: bsub.data() == ["for bob"], "bob's publication")
    assert bob.state is ClientState.CONNECTED
    assert bev.disconnected == []
    assert bev.connecting[1:] == []


# --- RPC through the proxy ----------------------------------------------------------------


async def test_rpc_through_the_proxy(kit: Kit) -> None:
    seen: list[dict[str, Any]] = []

    async def rpc(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        if body["method"] == "fail":
            return web.json_response({"error": {"code": 1001, "message": "no such thing"}})
        return web.json_response({"result": {"data": {"sum": sum(body["data"]["add"]), "user": body["user"]}}})

    app = web.Application()
    app.router.add_post("/rpc", rpc)
    async with serve_app(app) as backend:
        kit.start(rpc=f"{backend}/rpc")
        client, _ = await kit.connected(token("alice"))
        result = await client.rpc("sum", {"add": [1, 2, 3]})
        assert result.data == {"sum": 6, "user": "alice"}
        with pytest.raises(ReplyError) as err:
            await client.rpc("fail", {"add": []})
        assert err.value.code == 1001
        assert err.value.message == "no such thing"
        assert client.state is ClientState.CONNECTED
    assert [s["method"] for s in seen] == ["sum", "fail"]
    assert seen[0]["client"]
    assert seen[0]["transport"] == "websocket"
    assert seen[0]["data"] == {"add": [1, 2, 3]}
