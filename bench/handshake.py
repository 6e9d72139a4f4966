"""Handshake rate with JWT auth on vs off, side by side in one wsgate process.

    python -m bench.handshake [--rounds 3] [--window 2] [--concurrency 16]

One wsgate serves two echo endpoints: ``/ws`` (anonymous) and ``/ws-jwt`` (an HS256
JWT authenticator with ``allow``). Clients open a WebSocket, read the 101, send a close
frame, read the server's, and start again; the modes are measured in alternating
windows, so machine noise hits all alike:

- ``anonymous``: ``/ws``;
- ``jwt``: ``/ws-jwt``, every handshake with a token never seen before (the signature
  is checked every time: the worst case);
- ``jwt-reused``: ``/ws-jwt``, one token for all (reconnects, tabs): verified once,
  then remembered.

Reported: handshakes per second and the server's CPU per handshake (from /proc), and
each JWT mode's ratio to anonymous. The goal is a JWT handshake rate of at least 0.8x
the anonymous one.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jwt

from bench.harness import HOST, proc_cpu_seconds, standalone, wsgate_with
from wsgate.auth.jwt import VERIFIED_CACHE

SECRET = "bench-handshake-secret-0123456789abcdef"
CONFIG = f"""\
server: {{host: {HOST}}}
auth:
  users: {{jwt: {{algorithms: [HS256], secret: {SECRET}, audience: bench}}}}
policy: {{origins: "*", heartbeat: {{interval: 0}}}}
logging: {{level: warning}}
endpoints:
  - {{path: /ws, handler: echo}}
  - {{path: /ws-jwt, handler: echo, auth: users, allow: {{role: [bench]}}}}
"""
CLOSE_FRAME = bytes([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8])  # masked (zero key) close 1000


def request(port: int, path: str, token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
    ).encode()


async def handshakes(port: int, payloads: itertools.cycle[bytes], concurrency: int, window: float) -> int:
    """Handshakes completed (101, then a close handshake) by ``concurrency`` clients in ``window`` s."""
    done = 0
    deadline = time.monotonic() + window

    async def client() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(next(payloads))
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"handshake refused: {head.splitlines()[0]!r}")
            writer.write(CLOSE_FRAME)
            await reader.readexactly(4)  # the server's close frame: 0x88, length 2, the code
            writer.close()
            done += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done


def mint(count: int) -> list[str]:
    """``count`` distinct tokens: the same claims, each with its own ``jti``."""
    claims = {"sub": "bench", "aud": "bench", "role": "bench", "exp": time.time() + 3600}
    return [jwt.encode({**claims, "jti": str(i)}, SECRET, algorithm="HS256") for i in range(count)]


def measure(rounds: int, window: float, concurrency: int, server_cpu: int | None) -> dict[str, Any]:
    # More distinct tokens than the server remembers, so that a cycle never hits its cache.
    fresh = mint(VERIFIED_CACHE * 5)
    with wsgate_with(CONFIG, "handshake", server_cpu, "/ws") as (port, pid):
        payloads = {
            "anonymous": itertools.cycle([request(port, "/ws", None)]),
            "jwt": itertools.cycle([request(port, "/ws-jwt", token) for token in fresh]),
            "jwt-reused": itertools.cycle([request(port, "/ws-jwt", fresh[0])]),
        }
        samples: dict[str, list[tuple[float, float]]] = {mode: [] for mode in payloads}
        asyncio.run(handshakes(port, payloads["jwt"], concurrency, 0.3))  # warm-up
        modes = list(payloads)
        for rnd in range(rounds):
            for mode in modes[rnd % len(modes):] + modes[:rnd % len(modes)]:
                cpu0, t0 = proc_cpu_seconds(pid), time.monotonic()
                count = asyncio.run(handshakes(port, payloads[mode], concurrency, window))
                elapsed, cpu = time.monotonic() - t0, proc_cpu_seconds(pid) - cpu0
                samples[mode].append((count / elapsed, cpu * 1e6 / max(count, 1)))
                print(f"  round {rnd + 1} {mode:<10} {count / elapsed:8,.0f} handshakes/s, "
                      f"server {cpu * 1e6 / max(count, 1):6,.0f} µs CPU each", file=sys.stderr)
    result: dict[str, Any] = {"rounds": rounds, "window_s": window, "concurrency": concurrency}
    for mode, values in samples.items():
        result[mode] = {"handshakes_per_s": statistics.median(v[0] for v in values),
                        "server_cpu_us": statistics.median(v[1] for v in values)}
    anonymous = result["anonymous"]
    for mode in ("jwt", "jwt-reused"):
        result[mode]["rate_ratio"] = result[mode]["handshakes_per_s"] / anonymous["handshakes_per_s"]
        result[mode]["cpu_ratio"] = anonymous["server_cpu_us"] / result[mode]["server_cpu_us"]
    return result


def report(result: dict[str, Any]) -> str:
    anon = result["anonymous"]
    lines = [f"anonymous: {anon['handshakes_per_s']:,.0f} handshakes/s, "
             f"{anon['server_cpu_us']:,.0f} µs server CPU each"]
    for mode in ("jwt", "jwt-reused"):
        r = result[mode]
        lines.append(f"{mode}: {r['handshakes_per_s']:,.0f} handshakes/s ({r['rate_ratio']:.2f}x), "
                     f"{r['server_cpu_us']:,.0f} µs server CPU each -> {r['cpu_ratio']:.2f}x of anonymous "
                     "(goal: >= 0.8x)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.handshake", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=16)
    return standalone(parser, argv, lambda a: measure(a.rounds, a.window, a.concurrency, a.server_cpu), report)


if __name__ == "__main__":
    raise SystemExit(main())
