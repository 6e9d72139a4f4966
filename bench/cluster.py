"""Chat messages per second through one Redis Cluster shard.

    python -m bench.cluster [--senders 8] [--messages 2000] [--rooms 1]

Starts a three-master Redis Cluster (no replicas, loopback, ``tests/cluster.py``) and
one wsgate on it (pinned to CPU 0; the clients run on the others). ``rooms`` rooms, all
on the same master, each get ``senders`` clients sending ``messages`` messages in all
as fast as the server takes them, and one receiver. Reported: numbered messages per
second delivered to the receivers (every id checked, gap-free), and the CPU the shard's
redis-server and wsgate used meanwhile; messages/s divided by the shard's CPU share is
what one master could carry with enough gateways in front of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from redis.crc import key_slot

from bench.harness import HOST, proc_cpu_seconds, standalone, wsgate_with
from tests.cluster import Cluster
from wsgate.broker.redis_cluster import cluster_channel


def config(broker: str) -> str:
    return f"""\
server: {{host: {HOST}}}
broker: '{broker}'
policy: {{origins: "*", heartbeat: {{interval: 0}}, rate_limit: null, max_connections_per_ip: null}}
logging: {{level: warning}}
endpoints:
  - {{path: /chat, handler: chat, options: {{history: 0, keep: 100}}}}
"""


def rooms_on_one_master(cluster: Cluster, count: int) -> tuple[int, list[str]]:
    ranges = cluster.ranges()
    by_master: dict[int, list[str]] = {}
    for i in range(10_000):
        room = f"bench{i}"
        port = cluster.owner(key_slot(cluster_channel(f"wsgate:/chat:{room}").encode()), ranges).port
        by_master.setdefault(port, []).append(room)
        if len(by_master[port]) == count:
            return port, by_master[port]
    raise RuntimeError("no master got enough rooms")


async def flood(port: int, rooms: list[str], senders: int, messages: int,
                pids: dict[str, int]) -> dict[str, Any]:
    base = f"ws://{HOST}:{port}/chat"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        receivers = []
        for room in rooms:
            ws = await session.ws_connect(f"{base}?room={room}&name=receiver", max_msg_size=0)
            await ws.receive_str()
            await ws.receive_str()
            receivers.append(ws)
        clients = [await session.ws_connect(f"{base}?room={room}&name=s{i}")
                   for room in rooms for i in range(senders)]
        per_room = messages * senders

        async def receive(ws: aiohttp.ClientWebSocketResponse) -> None:
            expected = None
            count = 0
            while count < per_room:
                event = json.loads(await ws.receive_str())
                if event["type"] != "message":
                    continue
                if expected is not None and event["id"] != expected:
                    raise RuntimeError(f"gap: id {event['id']} after {expected - 1}")
                expected = event["id"] + 1
                count += 1

        async def send(ws: aiohttp.ClientWebSocketResponse) -> None:
            for n in range(messages):
                await ws.send_str(f"m{n}")

        await asyncio.sleep(0.5)  # the senders' joins are announced before the clock starts
        cpu0 = {name: proc_cpu_seconds(pid) for name, pid in pids.items()}
        start = time.perf_counter()
        async with asyncio.timeout(300):
            await asyncio.gather(*(receive(ws) for ws in receivers), *(send(ws) for ws in clients))
        elapsed = time.perf_counter() - start
        cpu = {name: proc_cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
    total = per_room * len(rooms)
    return {"rooms": len(rooms), "senders_per_room": senders, "messages": total, "seconds": elapsed,
            "messages_per_s": total / elapsed, "shard_cpu_pct": 100 * cpu["shard"] / elapsed,
            "wsgate_cpu_pct": 100 * cpu["wsgate"] / elapsed,
            "per_shard_cpu_messages_per_s": total / cpu["shard"] if cpu["shard"] else None}


def measure(senders: int, messages: int, rooms: int, server_cpu: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wsgate-bench-cluster-") as tmp:
        cluster = Cluster(Path(tmp))
        cluster.start()
        try:
            master, names = rooms_on_one_master(cluster, rooms)
            node = next(n for n in cluster.nodes if n.port == master)
            assert node.proc is not None
            with wsgate_with(config(cluster.url), "cluster", server_cpu, "/chat") as (port, pid):
                return asyncio.run(flood(port, names, senders, messages // senders,
                                         {"shard": node.proc.pid, "wsgate": pid}))
        finally:
            cluster.stop()


def report(result: dict[str, Any]) -> str:
    per_cpu = result["per_shard_cpu_messages_per_s"]
    return (f"{result['messages']:,} chat messages in {result['rooms']} room(s) on one shard, "
            f"{result['senders_per_room']} senders each: {result['messages_per_s']:,.0f} messages/s through one "
            f"wsgate (wsgate CPU {result['wsgate_cpu_pct']:.0f} %, the shard's redis-server CPU "
            f"{result['shard_cpu_pct']:.0f} %: {per_cpu:,.0f} messages per CPU-second of the shard)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--messages", type=int, default=20_000, help="per room, all senders together")
    parser.add_argument("--rooms", type=int, default=1)
    return standalone(parser, argv, lambda a: measure(a.senders, a.messages, a.rooms, a.server_cpu), report)


if __name__ == "__main__":
    raise SystemExit(main())
