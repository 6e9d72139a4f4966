"""The ``channels`` handler across two real gateway processes sharing a broker.

Each instance runs the same ``/connection/websocket`` endpoint on a real redis-server
(and, for the essentials, on a real three-master Redis Cluster). Clients are raw
``websockets`` connections speaking the Centrifugo client protocol v2 (JSON), so that
every push and reply is seen as sent; the backend's calls go to the server API over
HTTP as ``cent`` sends them. What one instance is asked must hold on the other: one
order and the same offsets for every publication, user-wide disconnects, unsubscribes
and server-side subscriptions, presence, and recovery after a gateway restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import channels_kit
import pytest
from channels_kit import RawClient
from cluster import Cluster
from conftest import RedisServer, WsgateProcess

Start = Callable[..., WsgateProcess]
WriteConfig = Callable[..., Path]

SECRET = "scale-out-secret-of-more-than-32-chars"
API_KEY = "scale-out-api-key"
PATH = "/connection/websocket"
WAIT = 5.0  # seconds any one expected event may take
QUIET = 0.3  # seconds an event that must not come is waited for, after a later one came
ROOM = "chat:room"  # history 10, force_recovery, presence
LIVE = "live:room"  # presence, join and leave pushes, no history


token = functools.partial(channels_kit.token, SECRET)


def channels_config(broker: str) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_timeout": "1s"},
        "broker": broker,
        "auth": {"app-jwt": {"jwt": {"algorithms": ["HS256"], "secret": SECRET}}},
        "endpoints": [{
            "path": PATH, "handler": "channels", "origins": "*",
            "options": {
                "token_auth": "app-jwt", "api_key": API_KEY,
                "namespaces": {
                    "": {},
                    "chat": {"history": 10, "history_ttl": "5m", "force_recovery": True, "presence": True,
                             "subscribe": "authenticated", "publish": "subscribers",
                             "presence_readers": "subscribers"},
                    "live": {"presence": True, "join_leave": True, "subscribe": "authenticated"},
                },
            },
        }],
    }


def start_instances(start: Start, write_config: WriteConfig, broker: str, count: int = 2
                    ) -> list[WsgateProcess]:
    """Start ``count`` gateways on ``broker`` at once, then wait until each one listens."""
    handles = [start(write_config(channels_config(broker), f"{name}.yaml"), wait=False)
               for name in "ab"[:count]]
    for handle in handles:
        handle.wait_listening()
    return handles


class Api:
    """The server API of one instance, called as ``cent`` calls it."""

    def __init__(self, session: aiohttp.ClientSession, instance: WsgateProcess) -> None:
        self.session, self.base = session, f"{instance.url}{PATH}/api"

    async def __call__(self, method: str, **params: Any) -> dict[str, Any]:
        async with asyncio.timeout(WAIT), self.session.post(
                f"{self.base}/{method}", json=params, headers={"X-API-Key": API_KEY}) as resp:
            assert resp.status == 200, (method, resp.status, await resp.text())
            body: dict[str, Any] = await resp.json()
        assert "error" not in body, (method, params, body)
        result: dict[str, Any] = body["result"]
        return result


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[WsgateProcess, str], Any]]:
    """Factory: a connected client of ``user`` on an instance, closed at teardown."""
    made: list[RawClient] = []

    async def make(instance: WsgateProcess, user: str) -> RawClient:
        client = await RawClient.open(f"{instance.ws_url}{PATH}", token(user), f"{user}@{instance.port}", WAIT)
        made.append(client)
        return client

    yield make
    for client in made:
        with contextlib.suppress(Exception):
            await client.aclose()


@pytest.fixture
def redis_pair(redis_server: RedisServer, wsgate_process: Start, write_config: WriteConfig
               ) -> Iterator[list[WsgateProcess]]:
    handles = start_instances(wsgate_process, write_config, redis_server.url)
    yield handles
    for name, handle in zip("AB", handles, strict=True):  # shown by pytest when a test failed
        print(f"--- instance {name} ---\n{handle.output}")


# --- the checks, for any broker ------------------------------------------------------------


async def publications_in_one_order(pair: list[WsgateProcess], session: aiohttp.ClientSession,
                                    clients: Callable[[WsgateProcess, str], Any]) -> None:
    a, b = pair
    api_a, api_b = Api(session, a), Api(session, b)
    on_a, on_b = await clients(a, "alice"), await clients(b, "bob")
    sub_a, sub_b = await on_a.result("subscribe", channel=ROOM), await on_b.result("subscribe", channel=ROOM)
    assert sub_a["epoch"] == sub_b["epoch"] != "", (sub_a, sub_b)
    assert (sub_a["recoverable"], sub_b["recoverable"]) == (True, True)

    assert (await api_a("publish", channel=ROOM, data={"n": 1}))["offset"] == 1
    assert (await api_b("publish", channel=ROOM, data={"n": 2}))["offset"] == 2
    assert await on_a.result("publish", channel=ROOM, data={"n": 3}) == {}
    assert await on_b.result("publish", channel=ROOM, data={"n": 4}) == {}
    seen_a, seen_b = await on_a.pubs(4), await on_b.pubs(4)
    assert seen_a == seen_b, (seen_a, seen_b)
    assert [(p["offset"], p["data"]) for p in seen_a] == [(n, {"n": n}) for n in range(1, 5)]
    assert [p.get("info", {}).get("user") for p in seen_a] == [None, None, "alice", "bob"]
    assert seen_a[2]["info"]["client"] == on_a.id

    # Both instances at once, the API and the clients of each: one order, gap-free offsets.
    burst = [api_a("publish", channel=ROOM, data={"b": i}) if i % 4 == 0 else
             api_b("publish", channel=ROOM, data={"b": i}) if i % 4 == 1 else
             on_a.result("publish", channel=ROOM, data={"b": i}) if i % 4 == 2 else
             on_b.result("publish", channel=ROOM, data={"b": i}) for i in range(24)]
    await asyncio.gather(*burst)
    seen_a, seen_b = await on_a.pubs(24), await on_b.pubs(24)
    assert seen_a == seen_b, "the two instances delivered in different orders"
    assert [p["offset"] for p in seen_a] == list(range(5, 29))
    assert sorted(p["data"]["b"] for p in seen_a) == list(range(24))
    # History (kept in the broker) agrees with what was delivered.
    history = await api_b("history", channel=ROOM, limit=-1)
    assert history["publications"] == [{k: v for k, v in p.items() if k != "channel"} for p in seen_a[-10:]]
    await asyncio.sleep(QUIET)
    on_a.nothing_more()
    on_b.nothing_more()


async def user_disconnect_everywhere(pair: list[WsgateProcess], session: aiohttp.ClientSession,
                                     clients: Callable[[WsgateProcess, str], Any]) -> None:
    a, b = pair
    carol_a, carol_b, carol_b2 = await clients(a, "carol"), await clients(b, "carol"), await clients(b, "carol")
    dave_b = await clients(b, "dave")
    for client in (carol_a, carol_b, carol_b2, dave_b):
        await client.result("subscribe", channel=ROOM)

    await Api(session, a)("disconnect", user="carol")
    assert await carol_a.closed() == (3503, "force disconnect")
    assert await carol_b.closed() == (3503, "force disconnect")
    assert await carol_b2.closed() == (3503, "force disconnect")
    # dave, on the same instance, is still connected and subscribed.
    await Api(session, a)("publish", channel=ROOM, data="after")
    (pub,) = await dave_b.pubs(1)
    assert pub["data"] == "after"
    # carol's presence goes once each gateway has run her on_disconnect, which follows
    # the close frame her clients already read.
    deadline = time.monotonic() + 5
    while (stats := await dave_b.result("presence_stats", channel=ROOM)) != {"num_clients": 1, "num_users": 1}:
        assert time.monotonic() < deadline, stats
        await asyncio.sleep(0.05)


# --- Redis -----------------------------------------------------------------------------------


async def test_redis_publications_reach_both_instances_in_one_order(
        redis_pair: list[WsgateProcess], session: aiohttp.ClientSession,
        clients: Callable[[WsgateProcess, str], Any]) -> None:
    await publications_in_one_order(redis_pair, session, clients)


async def test_redis_a_publish_is_answered_once_redis_holds_it_and_with_error_100_when_it_cannot(
        redis_server: RedisServer, redis_pair: list[WsgateProcess], session: aiohttp.ClientSession,
        clients: Callable[[WsgateProcess, str], Any]) -> None:
    a, b = redis_pair
    alice = await clients(a, "alice")
    await alice.result("subscribe", channel=ROOM)
    # Eight publishes in one frame: each reply means the publication is in the
    # history that the other instance reads from Redis.
    await alice.send(*({"id": 100 + i, "publish": {"channel": ROOM, "data": {"i": i}}} for i in range(8)))
    answered, delivered = [], []
    for _ in range(16):
        message = await alice.message()
        if "id" in message:
            assert message == {"id": message["id"], "publish": {}}, message
            answered.append(message["id"] - 100)
            history = await Api(session, b)("history", channel=ROOM, limit=-1)
            assert {"i": answered[-1]} in [p["data"] for p in history["publications"]], (answered, history)
        else:
            delivered.append(message["push"]["pub"]["data"]["i"])
    assert sorted(answered) == delivered == list(range(8))

    redis_server.stop()
    reply = await alice.ask("publish", channel=ROOM, data="lost")
    assert reply["error"]["code"] == 100, reply
    await asyncio.sleep(QUIET)
    alice.nothing_more()


async def test_redis_disconnect_by_user_reaches_every_instance(
        redis_pair: list[WsgateProcess], session: aiohttp.ClientSession,
        clients: Callable[[WsgateProcess, str], Any]) -> None:
    await user_disconnect_everywhere(redis_pair, session, clients)


async def test_redis_disconnect_with_code_and_whitelist_on_the_other_instance(
        redis_pair: list[WsgateProcess], session: aiohttp.ClientSession,
        clients: Callable[[WsgateProcess, str], Any]) -> None:
    a, b = redis_pair
    kept, gone = await clients(b, "erin"), await clients(b, "erin")
    only = await clients(a, "erin")
    # One client of the user, by id, asked on the other instance.
    await Api(session, a)("disconnect", user="erin", client=gone.id, disconnect={"code": 4321, "reason": "bye"})
    assert await gone.closed() == (4321, "bye")
    # The whole user but a whitelisted client, asked on B.
    await Api(session, b)("disconnect", user="erin", whitelist=[kept.id])
    assert await only.closed() == (3503, "force disconnect")
    assert (await kept.result("subscribe", channel=ROOM))["recoverable"] is True
    # A refresh that expires the user, asked on A, closes its connection on B.
    expired = await clients(b, "jack")
    await Api(session, a)("refresh", user="jack", expired=True)
    assert await expired.closed() == (3005, "connection expired")


async def test_redis_unsubscribe_by_user_reaches_every_instance(
        redis_pair: list[WsgateProcess], session: aiohttp.ClientSession,
        clients: Callable[[WsgateProcess, str], Any]) -> None:
    a, b = redis_pair
    api = Api(session, a)
    carol_a, carol_b = await clients(a, "carol"), await clients(b, "carol")
    dave_a, dave_b = await clients(a, "dave"), await clients(b, "dave")
    for client in (carol_a, carol_b, dave_a, dave_b):
        await client.result("subscribe", channel=ROOM)
    assert (await api("presence_stats", channel=ROOM)) == {"num_clients": 4, "num_users": 2}

    await api("unsubscribe", user="carol", channel=ROOM)
    for client in (carol_a, carol_b):
        assert await client.push() == {"channel": ROOM, "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}}
    await api("publish", channel=ROOM, data="after")
    for client in (dave_a, dave_b):
        assert [p["data"] for p in await client.pubs(1)] == ["after"]
    presence = (await Api(session, b)("presence", channel=ROOM))["presence"]
    assert sorted(presence) == sorted([dave_a.id, dave_b.id])
    await asyncio.sleep(QUIET)
    for client in (carol_a, carol_b):
        client.nothing_more()
        # Still connected, and free to subscribe again, as after a client's own unsubscribe.
        assert (await client.result("subscribe", channel=ROOM))["offset"] == 1


async def test_redis_subscribe_by_user_gives_a_server_side_subscription_on_the_other_instance(
        redis_pair: list[WsgateProcess], session: aiohttp.ClientSession,
        clients: Callable[[WsgateProcess, str], Any]) -> None:
    a, b = redis_pair
    api_a = Api(session, a)
    await api_a("publish", channel=ROOM, data="before")
    carol_b, carol_a = await clients(b, "carol"), await clients(a, "carol")
    dave_b = await clients(b, "dave")

    await api_a("subscribe", user="carol", channel=ROOM, data={"why": "invited"})
    epochs = set()
    for client in (carol_b, carol_a):
        push = await client.push()
        assert (push["channel"], set(push)) == (ROOM, {"channel", "subscribe"}), push
        sub = push["subscribe"]
        assert (sub["recoverable"], sub["positioned"], sub["offset"]) == (True, True, 1), sub
        assert sub["data"] == {"why": "invited"}
        epochs.add(sub["epoch"])
    assert len(epochs) == 1
    await Api(session, b)("publish", channel=ROOM, data="then")
    for client in (carol_b, carol_a):
        (pub,) = await client.pubs(1)
        assert (pub["offset"], pub["data"]) == (2, "then")
    # A server-side subscription is a subscription: presence shows it, a second is refused.
    presence = (await api_a("presence", channel=ROOM))["presence"]
    assert sorted(presence) == sorted([carol_a.id, carol_b.id])
    assert (await carol_b.ask("subscribe", channel=ROOM))["error"]["code"] == 105
    await asyncio.sleep(QUIET)
    for client in (carol_b, carol_a, dave_b):
        client.nothing_more()  # one subscribe push each; dave got none

    # From a position given by the backend: the publications after it come with the push.
    mona_b = await clients(b, "mona")
    epoch = epochs.pop()
    await api_a("subscribe", user="mona", channel=ROOM, recover_since={"offset": 1, "epoch": epoch})
    push = await mona_b.push()
    sub = push["subscribe"]
    assert (sub["was_recovering"], sub["recovered"], sub["epoch"], sub["offset"]) == (True, True, epoch, 2), sub
    assert [(p["offset"], p["data"]) for p in sub["publications"]] == [(2, "then")]


async def test_redis_presence_on_one_instance_lists_clients_of_the_other(
        redis_pair: list[WsgateProcess], session: aiohttp.ClientSession,
        clients: Callable[[WsgateProcess, str], Any]) -> None:
    a, b = redis_pair
    frank_b = await clients(b, "frank")
    await frank_b.result("subscribe", channel=ROOM)
    presence = (await Api(session, a)("presence", channel=ROOM))["presence"]
    assert presence == {frank_b.id: {"client": frank_b.id, "user": "frank"}}

    grace_a = await clients(a, "grace")
    await grace_a.result("subscribe", channel=ROOM)
    got = (await grace_a.result("presence", channel=ROOM))["presence"]
    assert {cid: info["user"] for cid, info in got.items()} == {frank_b.id: "frank", grace_a.id: "grace"}
    assert await grace_a.result("presence_stats", channel=ROOM) == {"num_clients": 2, "num_users": 2}

    # Joins and leaves on B are pushed to subscribers on A.
    await grace_a.result("subscribe", channel=LIVE)
    assert await grace_a.push() == {"channel": LIVE, "join": {"info": {"client": grace_a.id, "user": "grace"}}}
    await frank_b.result("subscribe", channel=LIVE)
    assert await grace_a.push() == {"channel": LIVE, "join": {"info": {"client": frank_b.id, "user": "frank"}}}

    await frank_b.aclose()  # leaving on B is seen on A
    assert await grace_a.push() == {"channel": LIVE, "leave": {"info": {"client": frank_b.id, "user": "frank"}}}
    async with asyncio.timeout(WAIT):
        while frank_b.id in (await grace_a.result("presence", channel=ROOM))["presence"]:
            await asyncio.sleep(0.05)
    assert await Api(session, a)("presence_stats", channel=ROOM) == {"num_clients": 1, "num_users": 1}
    assert list((await Api(session, b)("presence", channel=LIVE))["presence"]) == [grace_a.id]


async def test_redis_channels_and_info_count_every_instance(
        redis_pair: list[WsgateProcess], session: aiohttp.ClientSession,
        clients: Callable[[WsgateProcess, str], Any]) -> None:
    """As Centrifugo's: ``channels`` and ``info`` answer for the whole cluster, not one node."""
    a, b = redis_pair
    only_b = await clients(b, "kate")
    await only_b.result("subscribe", channel="chat:b-only")
    on_a, on_b = await clients(a, "liam"), await clients(b, "liam")
    for client in (on_a, on_b):
        await client.result("subscribe", channel=ROOM)
    wanted = {"chat:b-only": {"num_clients": 1}, ROOM: {"num_clients": 2}}
    answers: dict[str, Any] = {}
    deadline = time.monotonic() + WAIT  # a node's counts may be a moment old, as in Centrifugo
    while time.monotonic() < deadline:
        answers = {name: (await Api(session, instance)("channels"))["channels"]
                   for name, instance in (("A", a), ("B", b))}
        if answers == {"A": wanted, "B": wanted}:
            break
        await asyncio.sleep(0.1)
    assert answers == {"A": wanted, "B": wanted}
    counts: list[tuple[int, int, int]] = []
    while time.monotonic() < deadline:  # announced every few seconds
        nodes = (await Api(session, a)("info"))["nodes"]
        counts = sorted((n["num_clients"], n["num_users"], n["num_subs"]) for n in nodes)
        if counts == [(1, 1, 1), (2, 2, 2)]:
            break
        await asyncio.sleep(0.1)
    assert counts == [(1, 1, 1), (2, 2, 2)]


async def test_redis_api_publish_and_history_give_the_epoch_subscribers_hold(
        redis_pair: list[WsgateProcess], session: aiohttp.ClientSession,
        clients: Callable[[WsgateProcess, str], Any]) -> None:
    """Centrifugo's PublishResult and HistoryResult carry ``epoch`` with ``offset``: a
    backend can hand a client a position (``recover_since``) valid on every instance."""
    a, b = redis_pair
    on_a = await clients(a, "nina")
    epoch = (await on_a.result("subscribe", channel=ROOM))["epoch"]
    assert await Api(session, b)("publish", channel=ROOM, data=1) == {"offset": 1, "epoch": epoch}
    assert await Api(session, a)("publish", channel=ROOM, data=2) == {"offset": 2, "epoch": epoch}
    history = await Api(session, b)("history", channel=ROOM, limit=1, reverse=True)
    assert (history["offset"], history["epoch"], [p["data"] for p in history["publications"]]) == (2, epoch, [2])


async def test_redis_recovery_across_a_gateway_restart(
        redis_server: RedisServer, wsgate_process: Start, write_config: WriteConfig,
        session: aiohttp.ClientSession, clients: Callable[[WsgateProcess, str], Any]) -> None:
    a, b = start_instances(wsgate_process, write_config, redis_server.url)
    api_b = Api(session, b)
    client = await clients(a, "henry")
    subscribed = await client.result("subscribe", channel=ROOM)  # force_recovery: positioned without asking
    assert subscribed["recoverable"] is True
    epoch = subscribed["epoch"]
    for n in (1, 2):
        await api_b("publish", channel=ROOM, data={"n": n})
    assert [p["offset"] for p in await client.pubs(2)] == [1, 2]

    port = a.port
    assert a.stop() == 0
    code, _ = await client.closed()
    assert code in (1001, 3001), code  # going away: a client reconnects
    for n in (3, 4, 5):
        assert (await api_b("publish", channel=ROOM, data={"n": n}))["offset"] == n

    a = wsgate_process(write_config(channels_config(redis_server.url), "a2.yaml"), port=port)
    assert a.port == port
    again = await clients(a, "henry")
    result = await again.result("subscribe", channel=ROOM, recover=True, offset=2, epoch=epoch)
    assert (result["was_recovering"], result["recovered"], result["epoch"]) == (True, True, epoch), result
    assert [(p["offset"], p["data"]) for p in result["publications"]] == [(n, {"n": n}) for n in (3, 4, 5)]
    assert result["offset"] == 5
    await api_b("publish", channel=ROOM, data={"n": 6})
    assert [(p["offset"], p["data"]) for p in await again.pubs(1)] == [(6, {"n": 6})]
    await asyncio.sleep(QUIET)
    again.nothing_more()  # nothing recovered twice


async def test_redis_centrifuge_python_recovers_by_itself_across_a_gateway_restart(
        redis_server: RedisServer, wsgate_process: Start, write_config: WriteConfig,
        session: aiohttp.ClientSession) -> None:
    """The SDK keeps offset and epoch and reconnects to the restarted instance on its own."""
    from centrifuge import Client as Sdk
    from centrifuge import PublicationContext, SubscribedContext, SubscriptionEventHandler

    a, b = start_instances(wsgate_process, write_config, redis_server.url)
    api_b = Api(session, b)
    subscribed: asyncio.Queue[SubscribedContext] = asyncio.Queue()
    got: list[tuple[int, Any]] = []
    grew = asyncio.Event()

    class Events(SubscriptionEventHandler):
        async def on_subscribed(self, ctx: SubscribedContext) -> None:
            subscribed.put_nowait(ctx)

        async def on_publication(self, ctx: PublicationContext) -> None:
            got.append((ctx.pub.offset, ctx.pub.data))
            grew.set()

    async def until(count: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(got) < count:
                grew.clear()
                await grew.wait()

    sdk = Sdk(f"{a.ws_url}{PATH}", token=token("ivy"), min_reconnect_delay=0.05, max_reconnect_delay=0.3,
              proxy=None)
    sub = sdk.new_subscription(ROOM, Events())
    try:
        async with asyncio.timeout(WAIT):
            await sdk.connect()
            await sub.subscribe()
            first = await subscribed.get()
        assert first.recoverable
        assert first.stream_position is not None
        epoch = first.stream_position.epoch
        for n in (1, 2):
            await api_b("publish", channel=ROOM, data={"n": n})
        await until(2)

        port = a.port
        assert a.stop() == 0
        for n in (3, 4, 5):
            await api_b("publish", channel=ROOM, data={"n": n})
        wsgate_process(write_config(channels_config(redis_server.url), "a2.yaml"), port=port)
        async with asyncio.timeout(3 * WAIT):
            again = await subscribed.get()
        assert (again.was_recovering, again.recovered) == (True, True), again
        assert again.stream_position is not None
        assert again.stream_position.epoch == epoch
        await until(5)
        await api_b("publish", channel=ROOM, data={"n": 6})
        await until(6)
        await asyncio.sleep(QUIET)
        assert got == [(n, {"n": n}) for n in range(1, 7)]  # each once, in order
    finally:
        async with asyncio.timeout(WAIT):
            await sdk.disconnect()


# --- Redis Cluster (slow tier) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server and redis-cli are not installed: run the README's test command (scripts/test)")
    started = Cluster(tmp_path_factory.mktemp("channels-cluster"))
    started.start()
    yield started
    started.stop()


@pytest.fixture
def cluster_pair(cluster: Cluster, wsgate_process: Start, write_config: WriteConfig) -> Iterator[list[WsgateProcess]]:
    handles = start_instances(wsgate_process, write_config, cluster.url)
    yield handles
    for name, handle in zip("AB", handles, strict=True):
        print(f"--- instance {name} ---\n{handle.output}")


async def test_cluster_publications_reach_both_instances_in_one_order(
        cluster_pair: list[WsgateProcess], session: aiohttp.ClientSession,
        clients: Callable[[WsgateProcess, str], Any]) -> None:
    await publications_in_one_order(cluster_pair, session, clients)


async def test_cluster_disconnect_by_user_reaches_every_instance(
        cluster_pair: list[WsgateProcess], session: aiohttp.ClientSession,
        clients: Callable[[WsgateProcess, str], Any]) -> None:
    await user_disconnect_everywhere(cluster_pair, session, clients)
