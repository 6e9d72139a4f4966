"""centrifuge-js (npm ``centrifuge`` 5.8.0, on Node with ``ws``) against a real wsgate ``channels`` endpoint.

Each test starts wsgate as a process and a small aiohttp backend in the test: it mints
the tokens that the scenario's getToken asks for, answers as the rpc proxy, and carries
out the steps a scenario asks of it (publishing, disconnecting, subscribing through the
server API with plain POSTs and the X-API-Key header). The scenarios are
tests/node/centrifuge_*.js; each prints a JSON report as its last line.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from conftest import NODE_DIR, WsgateProcess, run_node, serve_app

SECRET = "channels-js-" + uuid.uuid4().hex  # HS256 wants 32+ characters
API_KEY = "api-" + uuid.uuid4().hex
PATH = "/connection/websocket"

CONFIG = """\
server: {{host: 127.0.0.1}}
auth:
  app-jwt: {{jwt: {{algorithms: [HS256], secret: "{secret}"}}}}
endpoints:
  - path: {path}
    handler: channels
    origins: "*"
    options:
      token_auth: app-jwt
      api_key: "{api_key}"
      expired_close_delay: 1s
      proxy:
        rpc: {backend}/rpc
        timeout: 2s
      namespaces:
        "":
          history: 100
          history_ttl: 5m
          presence: true
          join_leave: true
          subscribe: authenticated
          publish: subscribers
          presence_readers: subscribers
          history_readers: subscribers
        news: {{history: 10, subscribe: authenticated, publish: none}}
        feed: {{history: 10, subscribe: authenticated}}
        secret: {{history: 10, subscribe: token}}
"""

Step = Callable[[dict[str, Any]], Awaitable[Any]]


def mint(user: str, ttl: float = 3600, **claims: Any) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time() + ttl), **claims}, SECRET, algorithm="HS256")


@dataclass
class Gate:
    """A wsgate with a channels endpoint, and the test's backend beside it."""

    backend: str = ""
    process: WsgateProcess | None = None
    tokens: list[dict[str, Any]] = field(default_factory=list)
    rpc_seen: list[dict[str, Any]] = field(default_factory=list)
    api_calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        assert self.process is not None
        return self.process.ws_url + PATH

    async def api(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self.process is not None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session, \
                session.post(f"{self.process.url}{PATH}/api/{method}", json=params,
                             headers={"X-API-Key": API_KEY}) as response:
            assert response.status == 200, await response.text()
            answer: dict[str, Any] = await response.json()
        self.api_calls.append((method, params, answer))
        assert "error" not in answer, (method, params, answer)
        return answer

    # --- the backend ------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.tokens.append(body)
        return web.json_response({"token": mint(body["user"], ttl=body.get("ttl", 3600))})

    async def subtoken(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.tokens.append(body)
        return web.json_response({"token": mint(body["user"], ttl=body.get("ttl", 3600), channel=body["channel"])})

    async def rpc(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.rpc_seen.append(body)
        if body.get("method") == "refuse":
            return web.json_response({"error": {"code": 1001, "message": "refused by the backend"}})
        return web.json_response({"result": {"data": {"echo": body.get("data"), "user": body.get("user")}}})

    async def step(self, request: web.Request) -> web.Response:
        steps: dict[str, Step] = {"publish": self.publish, "cut": self.cut, "kick": self.kick,
                                  "subscribe": self.subscribe}
        return web.json_response(await steps[request.match_info["name"]](await request.json()))

    async def publish(self, body: dict[str, Any]) -> dict[str, list[int]]:
        """Publish ``{"n": i, "channel": ch}`` for i in from..to to each channel, interleaved."""
        first, last = body.get("from", 1), body.get("to", body.get("count", 0))
        offsets: dict[str, list[int]] = {ch: [] for ch in body["channels"]}
        for n in range(first, last + 1):
            for channel in body["channels"]:
                answer = await self.api("publish", {"channel": channel, "data": {"n": n, "channel": channel}})
                offsets[channel].append(answer["result"].get("offset", 0))
        return offsets

    async def cut(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.api("disconnect", {"user": body["user"],
                                             "disconnect": {"code": 3011, "reason": "force reconnect"}})

    async def kick(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.api("disconnect", {"user": body["user"]})

    async def subscribe(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.api("subscribe", {"user": body["user"], "channel": body["channel"]})

    async def scenario(self, name: str, params: dict[str, Any], within: float = 20) -> dict[str, Any]:
        return await run_node(f"centrifuge_{name}.js", self.ws_url, self.backend, json.dumps(params), within=within)


@pytest.fixture
async def gate(write_config: Callable[..., Path],
               wsgate_process: Callable[..., WsgateProcess]) -> AsyncIterator[Gate]:
    if not (NODE_DIR / "node_modules" / "centrifuge").is_dir():
        pytest.fail("tests/node/node_modules/centrifuge is missing: run the README's test command (scripts/test)")
    gate = Gate()
    app = web.Application()
    app.router.add_post("/token", gate.token)
    app.router.add_post("/subtoken", gate.subtoken)
    app.router.add_post("/rpc", gate.rpc)
    app.router.add_post("/step/{name}", gate.step)
    async with serve_app(app, shutdown_timeout=0.5) as url:
        gate.backend = url
        config = write_config(CONFIG.format(secret=SECRET, api_key=API_KEY, path=PATH, backend=url))
        gate.process = wsgate_process(config)
        yield gate


def numbers(publications: list[dict[str, Any]]) -> list[int]:
    return [p["data"]["n"] for p in publications]


# --- connect, several channels, order -----------------------------------------------------


async def test_token_connect_and_publications_in_order_on_several_channels(gate: Gate) -> None:
    token = mint("alice")
    channels = ["lobby", "news:world", "feed:alice"]
    report = await gate.scenario("channels", {"token": token, "channels": channels, "count": 6})
    client, subs = report["client"], report["subs"]
    assert report["state"] == "connected"
    assert len(client["connected"]) == 1
    assert client["connected"][0]["transport"] == "websocket"
    assert client["connecting"] == []
    assert client["disconnected"] == []
    assert client["errors"] == []
    assert [c["connect"]["token"] for c in client["connects"]] == [token]
    assert sorted(c["subscribe"]["channel"] for c in client["subscribes"]) == sorted(channels)
    for channel in channels:
        sub = subs[channel]
        assert sub["errors"] == [], sub
        assert sub["unsubscribed"] == [], sub
        assert [s["channel"] for s in sub["subscribed"]] == [channel]
        assert numbers(sub["publications"]) == [1, 2, 3, 4, 5, 6], sub["publications"]
        assert {p["channel"] for p in sub["publications"]} == {channel}
        assert all(p["data"]["channel"] == channel for p in sub["publications"])
        # Each channel is its own stream: offsets 1..6 as the server API answered them.
        assert [p["offset"] for p in sub["publications"]] == report["published"][channel] == [1, 2, 3, 4, 5, 6]


# --- join/leave, presence, client publish, history ------------------------------------------


async def test_join_leave_presence_client_publish_and_history(gate: Gate) -> None:
    report = await gate.scenario("presence", {"alice": mint("alice", info={"name": "Alice"}), "bob": mint("bob"),
                                              "channel": "room", "refused": "news:room"})
    alice, bob = report["alice"], report["bob"]
    a_id, b_id = alice["clientId"], bob["clientId"]
    assert a_id != b_id

    # As in Centrifugo, a subscriber also gets its own join.
    assert [(j["user"], j["client"]) for j in alice["sub"]["joins"]] == [("alice", a_id), ("bob", b_id)]
    assert alice["sub"]["joins"][0]["connInfo"] == {"name": "Alice"}
    assert {c: (v["user"], v["client"]) for c, v in alice["presence"].items()} == \
        {a_id: ("alice", a_id), b_id: ("bob", b_id)}
    assert alice["presence"][a_id].get("connInfo") == {"name": "Alice"}
    assert alice["presenceStats"] == {"numUsers": 2, "numClients": 2}

    # publish: subscribers lets a subscriber publish; both get it, with the publisher's info.
    assert alice["publishRefusal"] is None
    for who in (alice, bob):
        first = who["sub"]["publications"][0]
        assert first["data"] == {"text": "hi from alice"}
        assert first["info"]["user"] == "alice"
        assert first["info"]["client"] == a_id
        assert first["offset"] == 1
    # publish: none refuses every client.
    assert alice["refusedPublish"] == {"code": 103, "message": "permission denied", "temporary": False}

    assert [p["data"] for p in bob["sub"]["publications"]] == [
        {"text": "hi from alice"}, {"n": 1, "channel": "room"}, {"n": 2, "channel": "room"}]
    history = alice["history"]
    assert [p["offset"] for p in history["publications"]] == [1, 2, 3]
    assert [p["data"] for p in history["publications"]] == [p["data"] for p in bob["sub"]["publications"]]
    assert history["offset"] == 3
    assert history["epoch"]
    assert history["epoch"] == alice["sub"]["subscribed"][0]["streamPosition"]["epoch"]
    assert [p["offset"] for p in alice["historySince"]["publications"]] == [2, 3]
    assert [p["offset"] for p in alice["historyReverse"]["publications"]] == [3, 2]
    assert alice["historyPosition"]["publications"] == []
    assert alice["historyPosition"]["offset"] == 3

    assert [(x["user"], x["client"]) for x in alice["sub"]["leaves"]] == [("bob", b_id)]
    assert list(alice["presenceAfter"]) == [a_id]
    assert alice["presenceStatsAfter"] == {"numUsers": 1, "numClients": 1}
    assert alice["errors"] == []
    assert bob["errors"] == []
    assert alice["sub"]["errors"] == []


# --- recovery -------------------------------------------------------------------------------


async def test_recovery_after_a_forced_reconnect_gets_exactly_the_missed_publications(gate: Gate) -> None:
    report = await gate.scenario("recovery", {"user": "carol", "channel": "lobby"})
    client = report["client"]
    # getToken gave the first token; the reconnect reused it (it had not expired).
    assert client["tokens"] == 1
    assert [t["user"] for t in gate.tokens] == ["carol"]
    assert client["connecting"] == [{"code": 3011, "reason": "force reconnect"}]
    assert client["disconnected"] == []
    assert len(client["connected"]) == 2
    assert client["wire"]["opened"] == 2

    first, again = client["sub"]["subscribed"]
    assert first["recoverable"] is True
    assert first["wasRecovering"] is False
    assert first["recovered"] is False
    assert again["wasRecovering"] is True
    assert again["recovered"] is True
    assert again["hasRecoveredPublications"] is True
    pubs = client["sub"]["publications"]
    assert numbers(pubs) == [1, 2, 3, 4, 5, 6], pubs
    assert [p["offset"] for p in pubs] == [1, 2, 3, 4, 5, 6]

    # The resubscribe asked to recover from the last offset it saw, in the same epoch.
    resubscribe = client["subscribes"][1]["subscribe"]
    assert resubscribe["recover"] is True
    assert resubscribe["offset"] == 2
    assert resubscribe["epoch"] == first["streamPosition"]["epoch"]
    missed = client["wire"]["received"]
    reply = next(json.loads(line) for frame in missed for line in frame.split("\n")
                 if '"subscribe"' in line and json.loads(line).get("id") == client["subscribes"][1]["id"])
    assert [p["data"]["n"] for p in reply["subscribe"]["publications"]] == [3, 4, 5]
    assert client["state"] == "connected"


async def test_an_expired_connection_token_makes_the_client_ask_get_token_again(gate: Gate) -> None:
    report = await gate.scenario("expired", {"user": "ivan"})
    client = report["client"]
    assert [t["ttl"] for t in gate.tokens] == [-30, 60]
    assert [c["connect"]["token"] for c in client["connects"]] == client["tokens"]
    replies = [json.loads(line) for frame in client["wire"]["received"] for line in frame.split("\n") if line]
    first = next(r for r in replies if r.get("id") == client["connects"][0]["id"])
    assert first["error"]["code"] == 109
    assert first["error"]["message"] == "token expired"
    assert client["disconnected"] == []
    assert client["state"] == "connected"


# --- rpc through the proxy ----------------------------------------------------------------------


async def test_rpc_through_the_rpc_proxy(gate: Gate) -> None:
    report = await gate.scenario("rpc", {"token": mint("dave")})
    client = report["client"]
    client_id = client["connected"][0]["client"]
    assert client["echo"] == {"data": {"echo": {"q": "ping", "n": 1}, "user": "dave"}}
    assert client["refusal"] == {"code": 1001, "message": "refused by the backend", "temporary": False}
    assert client["afterRefusal"] == {"data": {"echo": {"q": "again"}, "user": "dave"}}
    assert client["state"] == "connected"
    assert client["disconnected"] == []
    assert [(r["method"], r["user"], r["client"], r.get("data")) for r in gate.rpc_seen] == [
        ("echo", "dave", client_id, {"q": "ping", "n": 1}),
        ("refuse", "dave", client_id, {"q": "no"}),
        ("echo", "dave", client_id, {"q": "again"}),
    ]
    assert all(r["transport"] == "websocket" and r["protocol"] == "json" for r in gate.rpc_seen)


# --- token refresh ----------------------------------------------------------------------------


async def test_token_refresh_keeps_the_connection_and_the_subscription(gate: Gate) -> None:
    first_ttl = 3
    report = await gate.scenario("refresh", {"user": "erin", "channel": "lobby", "private": "secret:erin",
                                             "first_ttl": first_ttl, "hold_ms": 2500}, within=20)
    client = report["client"]
    assert sorted((t["user"], t.get("channel", "")) for t in gate.tokens) == [
        ("erin", ""), ("erin", ""), ("erin", "secret:erin"), ("erin", "secret:erin")]
    assert len(set(client["tokens"])) == 2
    assert len(set(client["subTokens"])) == 2
    # Refreshed in place: one socket, one connect, refresh and sub_refresh with the new tokens.
    assert client["wire"]["opened"] == 1
    assert len(client["connected"]) == 1
    assert client["connecting"] == []
    assert client["disconnected"] == []
    assert [r["refresh"] for r in client["refreshes"]] == [{"token": client["tokens"][1]}]
    assert [r["sub_refresh"] for r in client["subRefreshes"]] == [
        {"channel": "secret:erin", "token": client["subTokens"][1]}]
    replies = {r.get("id"): r for r in (json.loads(line) for frame in client["wire"]["received"]
                                         for line in frame.split("\n") if line)}
    connect_reply = replies[1]["connect"]
    assert connect_reply["expires"] is True
    assert connect_reply["ttl"] <= first_ttl
    private = next(replies[c["id"]]["subscribe"] for c in client["subscribes"]
                   if c["subscribe"]["channel"] == "secret:erin")
    assert private["expires"] is True
    assert private["ttl"] <= first_ttl
    for command, kind in ((client["refreshes"][0], "refresh"), (client["subRefreshes"][0], "sub_refresh")):
        reply = replies[command["id"]]
        assert "error" not in reply, reply
        assert reply[kind]["expires"] is True
        assert reply[kind]["ttl"] > first_ttl
    assert numbers(client["sub"]["publications"]) == [1]
    assert numbers(client["privateSub"]["publications"]) == [1]
    assert client["privateSub"]["subscribing"] == []
    assert client["privateSub"]["unsubscribed"] == []
    assert client["state"] == "connected"
    assert client["privateState"] == "subscribed"


# --- a channel that needs a subscription token --------------------------------------------------


async def test_subscription_token_from_get_token(gate: Gate) -> None:
    report = await gate.scenario("private", {"token": mint("frank"), "user": "frank",
                                             "channel": "secret:plans", "other": "secret:other"})
    client = report["client"]
    assert client["asked"] == ["secret:plans"]
    assert gate.tokens == [{"user": "frank", "channel": "secret:plans"}]
    sent = {s["subscribe"]["channel"]: s["subscribe"] for s in client["subscribes"]}
    assert jwt.decode(sent["secret:plans"]["token"], SECRET, algorithms=["HS256"])["channel"] == "secret:plans"
    assert "token" not in sent["secret:other"]
    assert client["sub"]["subscribed"][0]["channel"] == "secret:plans"
    assert numbers(client["sub"]["publications"]) == [1, 2]
    assert client["other"]["unsubscribed"] == [{"code": 103, "reason": "permission denied"}]
    assert client["other"]["subscribed"] == []
    assert client["otherState"] == "unsubscribed"
    assert client["state"] == "connected"
    assert client["disconnected"] == []


# --- server-side subscriptions ----------------------------------------------------------------


async def test_server_side_subscriptions_from_the_token_and_the_api(gate: Gate) -> None:
    channels = ["feed:grace", "news:all"]
    report = await gate.scenario("server_subs", {"token": mint("grace", channels=channels), "user": "grace",
                                                 "channels": channels, "added": "lobby"})
    client = report["client"]
    before = client["before"]
    first, again = client["subscribed"][:before["subscribed"]], client["subscribed"][before["subscribed"]:]
    assert [s["channel"] for s in first] == [*channels, "lobby"]
    by_channel: dict[str, list[int]] = {}
    for pub in client["publications"][:before["publications"]]:
        by_channel.setdefault(pub["channel"], []).append(pub["data"]["n"])
        assert pub["data"]["channel"] == pub["channel"]
    assert by_channel == {"feed:grace": [1, 2], "news:all": [1, 2], "lobby": [1]}
    # The token's channels arrive in the connect reply, not as subscribe commands.
    assert not any("subscribe" in line for frame in client["wire"]["sent"] for line in frame.split("\n"))
    connect_reply = next(json.loads(line) for frame in client["wire"]["received"] for line in frame.split("\n")
                         if line and "connect" in json.loads(line))
    assert sorted(connect_reply["connect"]["subs"]) == sorted(channels)
    assert all(s["recoverable"] for s in first[:2])

    # After the cut, the client asks to recover the token's channels in its connect, and
    # gets exactly what it missed. The channel the API added was for that connection only.
    assert client["connecting"] == [{"code": 3011, "reason": "force reconnect"}]
    assert len(client["connected"]) == 2
    asked = client["connects"][1]["connect"]["subs"]
    assert {ch: (s["recover"], s["offset"]) for ch, s in asked.items()} == {
        "feed:grace": (True, 2), "news:all": (True, 2), "lobby": (True, 1)}
    assert sorted(s["channel"] for s in again) == sorted(channels)
    assert all(s["wasRecovering"] and s["recovered"] for s in again), again
    missed = client["publications"][before["publications"]:]
    assert [(p["channel"], p["data"]["n"], p["offset"]) for p in missed] == [("feed:grace", 3, 3), ("feed:grace", 4, 4)]
    assert client["unsubscribed"] == [{"channel": "lobby"}]
    assert client["state"] == "connected"


# --- disconnect by user ------------------------------------------------------------------------


async def test_disconnect_by_user_is_terminal(gate: Gate) -> None:
    report = await gate.scenario("disconnect", {"token": mint("heidi"), "user": "heidi", "channel": "lobby",
                                                "hold_ms": 1000})
    client = report["client"]
    assert client["disconnected"] == [{"code": 3503, "reason": "force disconnect"}]
    assert client["connecting"] == []
    assert client["state"] == "disconnected"
    assert client["wire"]["opened"] == 1
    assert client["subState"] == "subscribing"  # kept for a connect() the app may call again
    assert gate.api_calls[-1][:2] == ("disconnect", {"user": "heidi"})
    info = await gate.api("info", {})
    assert info["result"]["nodes"][0]["num_clients"] == 0
