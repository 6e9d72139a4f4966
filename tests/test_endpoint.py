"""A live endpoint and the Context its handler sees, without a gateway around them.

The endpoint runs over a hub and the memory broker; its connections are real
``Connection`` objects whose deliver records the frames, attached the way a session
attaches them (``attach``, then ``connected`` once ``on_connect`` returned).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from conn_kit import PATH, Client

from wsgate.broker import MemoryBroker
from wsgate.broker.base import Replay
from wsgate.config import Endpoint, Policy
from wsgate.errors import BrokerError
from wsgate.gateway.endpoint import LiveEndpoint
from wsgate.gateway.frames import TEXT
from wsgate.gateway.frozen import FrozenDict
from wsgate.gateway.hub import Hub
from wsgate.handler import Context, Handler, NoOptions, Recovery
from wsgate.observe.stats import EndpointStats, GatewayStats


class Plain(Handler):
    """A handler that does nothing: the tests call the Context themselves."""


class GatedBroker(MemoryBroker):
    """The memory broker whose replay waits for ``gate`` (when closed) and counts its calls;
    with ``fail``, replay raises BrokerError."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.replays = 0
        self.fail = False

    async def replay(self, channel: str, since: int | None, epoch: str | None, limit: int,
                     keep_for: float = 0.0, *, max_bytes: int = 0) -> Replay:
        self.replays += 1
        await self.gate.wait()
        if self.fail:
            raise BrokerError("the broker is down (test)")
        return await super().replay(channel, since, epoch, limit, keep_for, max_bytes=max_bytes)


@dataclass
class Setup:
    live: LiveEndpoint
    broker: GatedBroker

    @property
    def context(self) -> Context:
        return self.live.context

    def open(self, *names: str, connecting: bool = False) -> list[Client]:
        """Clients attached as a session attaches them; ``connecting``: still in on_connect."""
        clients = [Client(name) for name in names]
        for client in clients:
            self.live.attach(client.conn)
            if not connecting:
                self.live.connected(client.conn)
        return clients


def setup() -> Setup:
    broker = GatedBroker()
    endpoint = Endpoint(path=PATH, handler_ref="test_endpoint:Plain", handler_cls=Plain, options=NoOptions(),
                        policy=Policy())
    return Setup(LiveEndpoint(endpoint, Hub(broker, GatewayStats()), EndpointStats()), broker)


async def passes(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


# --- connections and broadcast ---------------------------------------------------------------


async def test_the_context_lists_the_open_connections() -> None:
    s = setup()
    a, b = s.open("a", "b")
    assert s.context.connections == {a.conn, b.conn}
    await s.live.detach(a.conn)
    assert s.context.connections == {b.conn}


async def test_broadcast_frames_once_and_counts_the_connections_that_took_it() -> None:
    s = setup()
    a, b, full = s.open("a", "b", "full")
    full.refuse = True
    assert s.context.broadcast("hi") == 2
    assert a.frames == b.frames == [bytes([0x80 | TEXT, 2]) + b"hi"]
    assert a.frames[0] is b.frames[0]
    assert s.context.broadcast("only a", [a.conn]) == 1
    assert s.context.broadcast_json({"é": [1, 2]}) == 2
    assert a.texts == ["hi", "only a", '{"é":[1,2]}']
    assert b.texts == ["hi", '{"é":[1,2]}']


# --- publish and subscribe through the Context ----------------------------------------------


async def test_publish_reaches_the_subscribers_of_the_topic_until_they_unsubscribe() -> None:
    s = setup()
    a, b, c = s.open("a", "b", "c")
    await s.context.subscribe(a.conn, "t")
    await s.context.subscribe(b.conn, "t")
    await s.context.subscribe(c.conn, "u")
    told: list[bool] = []
    await s.context.publish("t", "one", then=told.append)
    await s.context.unsubscribe(b.conn, "t")
    await s.context.publish("t", "two", wait=False)
    assert (a.texts, b.texts, c.texts, told) == (["one", "two"], ["one"], [], [True])


async def test_publish_numbered_counts_per_topic_and_takes_a_dotted_key_path() -> None:
    s = setup()
    [a] = s.open("a")
    await s.context.subscribe(a.conn, "t")
    told: list[int | None] = []
    assert await s.context.publish_numbered("t", {"x": 1}, 10) == 1
    assert await s.context.publish_numbered("t", {"push": {"pub": {}}}, 10, at="push.pub.offset",
                                            then=told.append) == 2
    assert await s.context.publish_numbered("t", {}, 10, wait=False) is None
    assert told == [2]
    assert [json.loads(t) for t in a.texts] == [{"id": 1, "x": 1}, {"push": {"pub": {"offset": 2}}}, {"id": 3}]


async def test_a_subscribe_in_on_connect_holds_live_messages_until_on_connect_returns() -> None:
    s = setup()
    for n in range(2):
        await s.context.publish_numbered("t", {"n": n}, 10)
    [a] = s.open("a", connecting=True)
    recovery = await s.context.subscribe(a.conn, "t", history=10)
    assert [m["id"] for m in recovery.messages] == [1, 2]
    await s.context.publish_numbered("t", {}, 10)
    await s.context.publish("t", "plain")
    await a.conn.send("welcome")  # the handler's preamble
    assert a.ids == ["welcome"]
    s.live.connected(a.conn)
    await s.context.publish_numbered("t", {}, 10)
    assert a.ids == ["welcome", 3, "plain", 4]


async def test_what_is_published_while_a_subscribe_reads_its_replay_comes_after_and_once() -> None:
    s = setup()
    await s.context.publish_numbered("t", {}, 10)
    [a] = s.open("a")
    s.broker.gate.clear()
    join = asyncio.ensure_future(s.context.subscribe(a.conn, "t", history=10))
    await passes()
    assert s.broker.replays == 1  # subscribed, reading the replay
    await s.context.publish_numbered("t", {}, 10)  # in the replay, and held
    await s.context.publish("t", "plain")
    assert a.frames == []
    s.broker.gate.set()
    recovery = await join
    assert ([m["id"] for m in recovery.messages], recovery.latest) == ([1, 2], 2)
    assert a.ids == ["plain"]  # released when subscribe returned; 2 only once
    await s.context.publish_numbered("t", {}, 10)
    assert a.ids == ["plain", 3]


async def test_a_subscribe_without_position_skips_the_broker_read() -> None:
    s = setup()
    await s.context.publish_numbered("t", {}, 10)
    a, = s.open("a")
    b, = s.open("b", connecting=True)
    assert await s.context.subscribe(a.conn, "t", history=10, position=False) == Recovery(False, "", (), 0)
    assert await s.context.subscribe(b.conn, "t", history=10, position=False) == Recovery(False, "", (), 0)
    assert s.broker.replays == 0
    await s.context.publish("t", "live")
    assert (a.texts, b.texts) == (["live"], [])  # b is still in on_connect
    s.live.connected(b.conn)
    assert b.texts == ["live"]


async def test_a_subscribe_whose_replay_fails_is_empty_and_still_subscribed() -> None:
    s = setup()
    [a] = s.open("a")
    s.broker.fail = True
    assert await s.context.subscribe(a.conn, "t", history=10) == Recovery(False, "", (), 0)
    await s.context.publish("t", "live")
    assert a.texts == ["live"]


async def test_a_subscribe_since_a_position_recovers_what_was_missed() -> None:
    s = setup()
    [a] = s.open("a")
    first = await s.context.subscribe(a.conn, "t", history=10)
    await s.context.unsubscribe(a.conn, "t")
    for _ in range(3):
        await s.context.publish_numbered("t", {}, 10)
    again = await s.context.subscribe(a.conn, "t", since=1, epoch=first.epoch, history=1)
    assert (again.recovered, again.epoch, again.latest) == (True, first.epoch, 3)
    assert [m["id"] for m in again.messages] == [2, 3]


async def test_detach_ends_the_subscriptions_and_the_endpoint_is_idle_when_the_last_goes() -> None:
    s = setup()
    a, b = s.open("a", "b")
    await s.context.subscribe(a.conn, "t")
    await s.live.detach(a.conn)
    await s.context.publish("t", "after")
    assert a.texts == []
    waiting = asyncio.ensure_future(s.live.wait_idle())
    await passes()
    assert not waiting.done()
    await s.live.detach(b.conn)
    async with asyncio.timeout(1):
        await waiting


# --- preamble ---------------------------------------------------------------------------------


async def test_what_a_preamble_sends_goes_before_the_live_messages_of_what_it_subscribed() -> None:
    s = setup()
    [a] = s.open("a")
    async with s.context.preamble(a.conn):
        await s.context.subscribe(a.conn, "t")
        await s.context.publish("t", "live")
        await a.conn.send("welcome")
        assert a.texts == ["welcome"]
    assert a.texts == ["welcome", "live"]
    assert a.conn not in s.live.connecting
    await s.context.publish("t", "later")
    assert a.texts == ["welcome", "live", "later"]


async def test_a_preamble_that_raises_still_releases() -> None:
    s = setup()
    [a] = s.open("a")

    async def preamble_that_raises() -> None:
        async with s.context.preamble(a.conn):
            await s.context.subscribe(a.conn, "t")
            await s.context.publish("t", "live")
            raise RuntimeError("handler bug")

    with pytest.raises(RuntimeError):
        await preamble_that_raises()
    assert a.texts == ["live"]


async def test_a_preamble_inside_on_connect_leaves_the_release_to_the_end_of_on_connect() -> None:
    s = setup()
    [a] = s.open("a", connecting=True)
    async with s.context.preamble(a.conn):
        await s.context.subscribe(a.conn, "t")
        await s.context.publish("t", "live")
    await a.conn.send("still on_connect")
    assert a.texts == ["still on_connect"]
    s.live.connected(a.conn)
    assert a.texts == ["still on_connect", "live"]


# --- signals ----------------------------------------------------------------------------------


async def test_listen_signal_unlisten_through_the_context() -> None:
    s = setup()
    [a] = s.open("a")
    await s.context.subscribe(a.conn, "s")
    heard: list[str] = []
    await s.context.listen("s", heard.append)
    await s.context.signal("s", "kick 7")
    await s.context.unlisten("s", heard.append)
    await s.context.signal("s", "unheard")
    assert heard == ["kick 7"]
    assert a.frames == []  # signals are not messages of the topic


# --- stream and frozen values -----------------------------------------------------------------


async def test_stream_tells_where_a_topic_stands_without_subscribing() -> None:
    s = setup()
    [a] = s.open("a")
    empty = await s.context.stream("t", 5)
    assert (empty.recovered, empty.latest, empty.messages) == (False, 0, ())
    for n in range(3):
        await s.context.publish_numbered("t", {"n": n}, 10)
    stream = await s.context.stream("t", 2)
    assert (stream.recovered, stream.epoch, stream.latest) == (False, empty.epoch, 3)
    assert [dict(m) for m in stream.messages] == [{"id": 2, "n": 1}, {"id": 3, "n": 2}]
    assert all(isinstance(m, FrozenDict) for m in stream.messages)
    recovery = await s.context.subscribe(a.conn, "t")
    assert recovery.epoch == empty.epoch  # the epoch stream made is the topic's


async def test_recovery_and_its_events_are_read_only() -> None:
    s = setup()
    await s.context.publish_numbered("t", {"tags": ["a"], "meta": {"k": 1}}, 10)
    [a] = s.open("a")
    recovery = await s.context.subscribe(a.conn, "t", history=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        recovery.latest = 9  # type: ignore[misc]
    [event] = recovery.messages
    assert isinstance(recovery.messages, tuple)
    assert event == {"id": 1, "tags": ("a",), "meta": {"k": 1}}
    changes: list[Callable[[Any], object]] = [
        lambda e: e.__setitem__("id", 2), lambda e: e.pop("id"), lambda e: e["meta"].update(k=2),
        lambda e: e["meta"].clear(), lambda e: e.setdefault("new", 1), lambda e: e.__delitem__("id"),
    ]
    for change in changes:
        with pytest.raises(TypeError, match="read-only"):
            change(event)
    assert json.loads(json.dumps(event)) == {"id": 1, "tags": ["a"], "meta": {"k": 1}}
    copy = dict(event)
    copy["id"] = 2
    assert event["id"] == 1


async def test_fresh_joins_of_an_unchanged_topic_share_one_frozen_tuple_until_it_changes() -> None:
    s = setup()
    await s.context.publish_numbered("t", {}, 10)
    a, b, c = s.open("a", "b", "c")
    first = await s.context.subscribe(a.conn, "t", history=10)
    second = await s.context.subscribe(b.conn, "t", history=10)
    assert second.messages is first.messages
    assert await s.context.history("t", 10) is await s.context.history("t", 10)
    await s.context.publish_numbered("t", {}, 10)
    third = await s.context.subscribe(c.conn, "t", history=10)
    assert [m["id"] for m in third.messages] == [1, 2]
    assert [m["id"] for m in first.messages] == [1]  # what was handed out stays as it was
    assert [m["id"] for m in await s.context.history("t", 10)] == [1, 2]


# --- background work --------------------------------------------------------------------------


async def test_spawned_work_that_fails_is_counted_and_stop_cancels_the_rest() -> None:
    s = setup()
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async def broken() -> None:
        raise RuntimeError("background bug")

    s.context.spawn(forever, "forever")
    s.context.spawn(broken, "broken")
    await started.wait()
    await passes()
    assert s.live.stats.handler_errors == 1
    assert len(s.live.tasks) == 1
    async with asyncio.timeout(2):
        await s.live.stop()
    assert not s.live.tasks
