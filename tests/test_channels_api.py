"""The ``channels`` server API through Centrifugal's ``cent`` SDK (sync and async) against a real wsgate.

Effects on live connections are watched with centrifuge-python, the client SDK; a raw
``websockets`` client only where a close code must be read off the wire.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import cent
import channels_kit
import pytest
import websockets
from cent.exceptions import CentApiResponseError, CentNetworkError, CentUnauthorizedError
from centrifuge import (
    Client,
    ClientState,
)
from channels_kit import ClientEvents, SdkClients, subscribed, until
from conftest import WsgateProcess

SECRET = "channels-api-secret-0123456789abcdef"
API_KEY = "channels-api-key-9d41e7c3a0"
PATH = "/connection/websocket"
WITHIN = 5.0
ENV = {"JWT_SECRET": SECRET, "CHANNELS_API_KEY": API_KEY}


def config(level: str = "info") -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1"},
        "logging": {"level": level},
        "auth": {"app-jwt": {"jwt": {"algorithms": ["HS256"], "secret": "${JWT_SECRET}"}}},
        "endpoints": [{"path": PATH, "handler": "channels", "origins": "*", "options": {
            "token_auth": "app-jwt",
            "api_key": "${CHANNELS_API_KEY}",
            "namespaces": {
                "": {"subscribe": "authenticated", "presence": True, "history": 50},
                "srv": {"subscribe": "token", "history": 10},
                "nohist": {"subscribe": "authenticated"},
            },
        }}],
    }


token = functools.partial(channels_kit.token, SECRET)


class Gate:
    """A running wsgate, its ``cent`` clients and the SDK clients of one test."""

    def __init__(self, proc: WsgateProcess) -> None:
        self.proc = proc
        self.api_url = f"{proc.url}{PATH}/api"
        self.sync = cent.Client(self.api_url, API_KEY, timeout=WITHIN)
        self.aio = cent.AsyncClient(self.api_url, API_KEY, timeout=WITHIN)
        self.sdk = SdkClients(f"{proc.ws_url}{PATH}")

    async def call(self, method: str, request: Any) -> Any:
        """The sync client's answer (off the loop) and the async client's must agree: the sync one's is returned."""
        return await asyncio.to_thread(getattr(self.sync, method), request)

    async def connected(self, user: str, **claims: Any) -> tuple[Client, ClientEvents]:
        return await self.sdk.connected(token(user, **claims))

    async def close(self) -> None:
        await self.sdk.disconnect_all()
        await self.aio.close()
        self.sync.close()


@pytest.fixture
def start(wsgate_process: Callable[..., WsgateProcess], write_config: Callable[..., Path]) -> Callable[..., Gate]:
    def run(level: str = "info") -> Gate:
        return Gate(wsgate_process(write_config(config(level)), env=ENV))
    return run


@pytest.fixture
async def gate(start: Callable[..., Gate]) -> AsyncIterator[Gate]:
    made = start()
    try:
        yield made
    finally:
        async with asyncio.timeout(10):
            await made.close()


# --- publish, broadcast, history ----------------------------------------------------------


async def test_publish_and_broadcast_reach_subscribers(gate: Gate) -> None:
    client, _ = await gate.connected("alice")
    subs = {}
    for ch in ("a", "b", "nohist:c"):
        _, subs[ch] = await subscribed(client, ch)

    sync = await gate.call("publish", cent.PublishRequest(channel="a", data={"n": 1}, tags={"k": "v"}))
    assert sync.offset == 1
    aio = await gate.aio.publish(cent.PublishRequest(channel="a", data={"n": 2}))
    assert aio.offset == 2
    none = await gate.aio.publish(cent.PublishRequest(channel="nohist:c", data="x"))
    assert none.offset == 0

    result = await gate.aio.broadcast(cent.BroadcastRequest(channels=["a", "b", "nohist:c", "nope:d"], data="all"))
    assert [r.result.offset if r.result else None for r in result.responses] == [3, 1, 0, None]
    assert result.responses[3].error is not None
    assert result.responses[3].error.code == 102
    same = await gate.call("broadcast", cent.BroadcastRequest(channels=["b"], data="sync"))
    assert same.responses[0].result is not None
    assert same.responses[0].result.offset == 2

    await until(lambda: [len(p.pubs) for p in subs.values()] == [3, 2, 2], "every publication")
    assert [(p.pub.data, p.pub.offset, p.pub.tags) for p in subs["a"].pubs] == [
        ({"n": 1}, 1, {"k": "v"}), ({"n": 2}, 2, {}), ("all", 3, {})]
    assert [p.pub.data for p in subs["b"].pubs] == ["all", "sync"]
    assert [p.pub.data for p in subs["nohist:c"].pubs] == ["x", "all"]


async def test_history_and_history_remove(gate: Gate) -> None:
    for i in range(1, 5):
        await gate.aio.publish(cent.PublishRequest(channel="h", data={"n": i}))
    top = await gate.call("history", cent.HistoryRequest(channel="h"))
    assert top.publications == []
    assert top.offset == 4
    got = await gate.aio.history(cent.HistoryRequest(channel="h", limit=2, reverse=True))
    assert [p.data["n"] for p in got.publications] == [4, 3]
    since = await gate.aio.history(cent.HistoryRequest(
        channel="h", limit=10, since=cent.StreamPosition(offset=1, epoch=top.epoch)))
    assert [p.offset for p in since.publications] == [2, 3, 4]

    with pytest.raises(CentApiResponseError) as err:
        await gate.aio.history_remove(cent.HistoryRemoveRequest(channel="h"))
    assert err.value.code == 108
    with pytest.raises(CentApiResponseError) as err:
        await gate.call("history", cent.HistoryRequest(channel="nohist:x", limit=1))
    assert err.value.code == 108


# --- a user's connections -----------------------------------------------------------------


async def test_subscribe_and_unsubscribe_a_live_connection(gate: Gate) -> None:
    client, events = await gate.connected("carol")
    other, oevents = await gate.connected("dave")
    await gate.aio.publish(cent.PublishRequest(channel="srv:news", data="before"))
    await gate.call("subscribe", cent.SubscribeRequest(user="carol", channel="srv:news", data={"hello": 1}))
    await until(lambda: len(events.server_subscribed) == 1, "the subscribe push")
    pushed = events.server_subscribed[0]
    assert pushed.channel == "srv:news"
    assert pushed.data == {"hello": 1}
    assert pushed.recoverable
    assert pushed.stream_position is not None
    assert pushed.stream_position.offset == 1

    await gate.aio.publish(cent.PublishRequest(channel="srv:news", data="after"))
    await until(lambda: len(events.server_pubs) == 1, "the publication on the server-side subscription")
    assert (events.server_pubs[0].channel, events.server_pubs[0].pub.data) == ("srv:news", "after")

    await gate.aio.unsubscribe(cent.UnsubscribeRequest(user="carol", channel="srv:news"))
    await until(lambda: len(events.server_unsubscribed) == 1, "the unsubscribe push")
    assert events.server_unsubscribed[0].channel == "srv:news"
    await gate.aio.publish(cent.PublishRequest(channel="srv:news", data="gone"))
    await gate.aio.publish(cent.PublishRequest(channel="h", data="sync point"))  # not subscribed: nothing comes
    assert [p.pub.data for p in events.server_pubs] == ["after"]
    assert oevents.server_subscribed == []
    assert oevents.server_pubs == []
    assert client.state is ClientState.CONNECTED
    assert other.state is ClientState.CONNECTED


async def test_disconnect_with_a_code_and_a_whitelist(gate: Gate) -> None:
    first, fev = await gate.connected("erin")
    second, sev = await gate.connected("erin")
    # Both client ids, from presence: a disconnect that whitelists them both ends nobody.
    for c in (first, second):
        await subscribed(c, "room")
    presence = await gate.aio.presence(cent.PresenceRequest(channel="room"))
    ids = list(presence.presence)
    assert len(ids) == 2
    await gate.aio.disconnect(cent.DisconnectRequest(
        user="erin", whitelist=ids, disconnect=cent.Disconnect(code=4000, reason="nobody")))
    await gate.call("disconnect", cent.DisconnectRequest(
        user="erin", disconnect=cent.Disconnect(code=4501, reason="custom terminal")))
    await until(lambda: len(fev.disconnected) == 1 and len(sev.disconnected) == 1, "both closes")
    assert {(d.code, d.reason) for d in fev.disconnected + sev.disconnected} == {(4501, "custom terminal")}
    assert [c.code for c in fev.connecting + sev.connecting if c.code >= 3000] == []


async def test_refresh_expired_closes_3005(gate: Gate) -> None:
    url = f"{gate.proc.ws_url}{PATH}"
    async with websockets.connect(url, close_timeout=1) as ws:
        await ws.send(json.dumps({"id": 1, "connect": {"token": token("frank")}}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), WITHIN))
        assert "client" in reply["connect"]
        await gate.aio.refresh(cent.RefreshRequest(user="someone-else", expired=True))
        await gate.call("refresh", cent.RefreshRequest(user="frank", expired=True))
        async with asyncio.timeout(WITHIN):
            await ws.wait_closed()
        assert ws.close_code == 3005
        assert ws.close_reason == "connection expired"


async def test_presence_channels_info_batch(gate: Gate) -> None:
    alice, _ = await gate.connected("alice", info={"name": "A"})
    bob, _ = await gate.connected("bob")
    for c in (alice, bob):
        await subscribed(c, "lobby")
    await subscribed(bob, "nohist:side")

    presence = await gate.call("presence", cent.PresenceRequest(channel="lobby"))
    assert sorted(i.user for i in presence.presence.values()) == ["alice", "bob"]
    assert [i.conn_info for i in presence.presence.values() if i.user == "alice"] == [{"name": "A"}]
    stats = await gate.aio.presence_stats(cent.PresenceStatsRequest(channel="lobby"))
    assert (stats.num_clients, stats.num_users) == (2, 2)

    channels = await gate.aio.channels(cent.ChannelsRequest())
    assert {k: v.num_clients for k, v in channels.channels.items()} == {"lobby": 2, "nohist:side": 1}
    only = await gate.call("channels", cent.ChannelsRequest(pattern="nohist:*"))
    assert list(only.channels) == ["nohist:side"]

    info = await gate.aio.info(cent.InfoRequest())
    node = info.nodes[0]
    assert (node.num_clients, node.num_users, node.num_subs, node.num_channels) == (2, 2, 3, 2)

    batch = await gate.aio.batch(cent.BatchRequest(requests=[
        cent.PublishRequest(channel="lobby", data="b1"),
        cent.PresenceStatsRequest(channel="lobby"),
        cent.HistoryRequest(channel="lobby", limit=10),
    ]))
    publish, pstats, history = batch.replies
    assert isinstance(publish, cent.PublishResult)
    assert publish.offset == 1
    assert isinstance(pstats, cent.PresenceStatsResult)
    assert pstats.num_clients == 2
    assert isinstance(history, cent.HistoryResult)
    assert [p.data for p in history.publications] == ["b1"]
    sync = await gate.call("batch", cent.BatchRequest(requests=[cent.InfoRequest()]))
    assert isinstance(sync.replies[0], cent.InfoResult)
    assert sync.replies[0].nodes[0].num_clients == 2


# --- errors -------------------------------------------------------------------------------


async def test_errors_map_to_cents_exceptions(start: Callable[..., Gate]) -> None:
    gate = start()
    try:
        wrong = cent.AsyncClient(gate.api_url, API_KEY + "x", timeout=WITHIN)
        with pytest.raises(CentUnauthorizedError):
            await wrong.publish(cent.PublishRequest(channel="a", data=1))
        await wrong.close()
        with pytest.raises(CentUnauthorizedError):
            await asyncio.to_thread(cent.Client(gate.api_url, "", timeout=WITHIN).info, cent.InfoRequest())

        with pytest.raises(CentApiResponseError) as err:
            await gate.aio.publish(cent.PublishRequest(channel="unknown:x", data=1))
        assert err.value.code == 102
        with pytest.raises(CentApiResponseError) as err:
            await gate.call("publish", cent.PublishRequest(channel="", data=1))
        assert err.value.code == 107
        with pytest.raises(CentApiResponseError) as err:
            await gate.aio.disconnect(cent.DisconnectRequest(user="x", disconnect=cent.Disconnect(code=1000)))
        assert err.value.code == 107
        with pytest.raises(CentApiResponseError) as err:
            await gate.aio.history(cent.HistoryRequest(channel="a", limit=-5))
        assert err.value.code == 107
    finally:
        async with asyncio.timeout(10):
            await gate.close()

    await asyncio.to_thread(gate.proc.stop)
    stopped = cent.AsyncClient(gate.api_url, API_KEY, timeout=WITHIN)
    try:
        with pytest.raises(CentNetworkError):
            await stopped.info(cent.InfoRequest())
    finally:
        await stopped.close()
    with pytest.raises(CentNetworkError):
        await asyncio.to_thread(cent.Client(gate.api_url, API_KEY, timeout=WITHIN).info, cent.InfoRequest())


async def test_the_api_key_never_reaches_the_log(start: Callable[..., Gate]) -> None:
    gate = start("debug")
    try:
        client, _ = await gate.connected("alice")
        await gate.aio.publish(cent.PublishRequest(channel="a", data={"n": 1}))
        await gate.call("info", cent.InfoRequest())
        with pytest.raises(CentApiResponseError):
            await gate.aio.publish(cent.PublishRequest(channel="unknown:x", data=1))
        wrong = cent.AsyncClient(gate.api_url, API_KEY[:-1], timeout=WITHIN)
        with pytest.raises(CentUnauthorizedError):
            await wrong.info(cent.InfoRequest())
        await wrong.close()
        await gate.aio.disconnect(cent.DisconnectRequest(user="alice"))
        await until(lambda: client.state is ClientState.DISCONNECTED, "alice's disconnect")
    finally:
        async with asyncio.timeout(10):
            await gate.close()
    await asyncio.to_thread(gate.proc.stop)
    output = gate.proc.output
    assert "/connection/websocket/api/publish" in output or "wsgate.access" in output, output[-2000:]
    for secret in (API_KEY, API_KEY[:-1], API_KEY[:12]):
        assert secret not in output
