"""A reconnect storm: many chat clients resume at once, each some messages behind.

    python -m bench.resume [--clients 1000] [--rooms 10] [--behind 100]

One wsgate (memory broker, pinned to CPU 0; the clients run on the others). ``clients``
join ``rooms`` rooms evenly and remember the epoch and the last id; all leave; each room
then gets ``behind`` new messages; then every client reconnects at the same moment with
``since`` and ``epoch``. Reported: the time from the first reconnect until every client
has its welcome with ``"recovered": true`` and a history holding exactly the messages it
missed, and the p50/p99 of the per-client times. The goal is under 2 s for 1,000
clients 100 messages behind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench.harness import HOST, proc_cpu_seconds, standalone, wsgate_with

CONFIG = f"""\
server: {{host: {HOST}}}
policy: {{origins: "*", heartbeat: {{interval: 0}}, rate_limit: null, max_connections_per_ip: null}}
logging: {{level: warning}}
endpoints:
  - {{path: /chat, handler: chat, options: {{history: 10, keep: 1000}}}}
"""


async def join(session: aiohttp.ClientSession, url: str) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any],
                                                                    dict[str, Any]]:
    ws = await session.ws_connect(url, max_msg_size=0)
    welcome = json.loads(await ws.receive_str())
    history = json.loads(await ws.receive_str())
    return ws, welcome, history


async def storm(port: int, pid: int, clients: int, rooms: int, behind: int) -> dict[str, Any]:
    base = f"ws://{HOST}:{port}/chat"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        gate = asyncio.Semaphore(64)

        async def first(i: int) -> tuple[str, int]:
            async with gate:
                ws, welcome, history = await join(session, f"{base}?room=r{i % rooms}&name=c{i}")
            last = max([m["id"] for m in history["messages"]], default=0)
            await ws.close()
            return welcome["epoch"], last

        seen = await asyncio.gather(*(first(i) for i in range(clients)))
        for room in range(rooms):
            ws, _, _ = await join(session, f"{base}?room=r{room}&name=sender")
            for n in range(behind):
                await ws.send_str(f"m{n}")
            await ws.close()

        start, cpu0 = time.perf_counter(), proc_cpu_seconds(pid)

        async def resume(i: int) -> float:
            epoch, last = seen[i]
            ws, welcome, history = await join(session, f"{base}?room=r{i % rooms}&name=c{i}&since={last}&epoch={epoch}")
            done = time.perf_counter() - start
            ids = [m["id"] for m in history["messages"]]
            if not welcome["recovered"] or ids != list(range(last + 1, last + behind + 1)):
                raise RuntimeError(f"client {i} was not recovered exactly: {welcome}, ids {ids[:3]}...")
            await ws.close()
            return done

        times = await asyncio.gather(*(resume(i) for i in range(clients)))
        cpu = proc_cpu_seconds(pid) - cpu0
    quantiles = statistics.quantiles(times, n=100)
    return {"clients": clients, "rooms": rooms, "behind": behind, "all_recovered_s": max(times),
            "p50_s": quantiles[49], "p99_s": quantiles[98], "server_cpu_s": cpu}


def measure(clients: int, rooms: int, behind: int, server_cpu: int | None) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * clients + 256)), hard))
    with wsgate_with(CONFIG, "resume", server_cpu, "/chat") as (port, pid):
        return asyncio.run(storm(port, pid, clients, rooms, behind))


def report(result: dict[str, Any]) -> str:
    return (f"{result['clients']:,} clients in {result['rooms']} rooms, {result['behind']} messages behind: all "
            f"recovered in {result['all_recovered_s']:.2f} s (p50 {result['p50_s']:.2f} s, p99 {result['p99_s']:.2f} "
            f"s; goal: under 2 s); server CPU {result['server_cpu_s']:.2f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.resume", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--behind", type=int, default=100)
    return standalone(parser, argv, lambda a: measure(a.clients, a.rooms, a.behind, a.server_cpu), report)


if __name__ == "__main__":
    raise SystemExit(main())
