"""The ``pusher`` scenario: the Pusher-protocol handler, each figure against a baseline
measured in the same run (see bench/README.md, "Pusher").

Two groups of rows, each its own scenario name in the table and the JSON:

- ``pu-fanout``: N pusher-protocol subscribers of one public channel (each got
  ``pusher:connection_established`` and ``pusher_internal:subscription_succeeded``);
  events triggered through the HTTP API (``POST /apps/<id>/events``) by the ``pusher``
  SDK, which signs every request, with k requests in flight on keep-alive connections;
  deliveries/s and server CPU per delivery, vs the ``/fanout`` plugin endpoint
  (``Context.broadcast``) with a frame of the same length.
- ``pu-api``: triggers/s from the SDK over keep-alive, to a channel with no subscribers
  and with a few, vs wsgate's own ``POST /api/publish`` from aiohttp.

Client events are not measured: they are for private and presence channels only, whose
subscriptions carry an HMAC of the ``socket_id`` the server chose, which the C load
generator cannot compute.

Set ``WSGATE_BENCH_PROFILE=DIR`` to run wsgate under cProfile with a CPU-time clock (its
figures are then not comparable); the stats go to ``DIR/wsgate-pusher-<group>-<n>.prof``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bench.channels import ChannelsRun, _publisher
from bench.harness import HOST, BenchError, ServerProcess, wait_quiet

if TYPE_CHECKING:
    from bench.run import Bench, Case, Settings

# the pusher endpoint of wsgate-bench.yaml
APP_ID = "100001"  # numeric, as the SDK requires
KEY = "bench-pusher-key"
SECRET = "bench-pusher-secret"
PATH = f"/app/{KEY}?protocol=7"
CHANNEL = "bench"
EVENT = "ev"
DATA = "a" * 32
# what a subscriber gets for each triggered event: the data string as the API was given it
FRAME = json.dumps({"event": EVENT, "channel": CHANNEL, "data": DATA}, separators=(",", ":"))
MATCH = f'"event":"{EVENT}"'
FAIL_ON = '"pusher:error"'

SCENARIOS = ("pu-fanout", "pu-api")
FANOUT_BASE = "fanout plugin"
API_TRIGGER = "pusher sdk trigger"
API_BASE = "/api/publish aiohttp"
BASELINES = {"pu-fanout": FANOUT_BASE, "pu-api": API_BASE}
ROW_SERVERS = (FANOUT_BASE, API_TRIGGER, API_BASE)


def cases(s: Settings) -> list[Case]:
    from bench.run import Case

    return [
        Case("pu-fanout", f"N={s.pu_receivers:,} k={s.pu_inflight}", "bcast", s.pu_receivers, s.pu_inflight,
             len(FRAME)),
        Case("pu-api", f"0 subscribers k={s.pu_api_inflight}", "api", 0, s.pu_api_inflight),
        Case("pu-api", f"{s.pu_api_few} subscribers k={s.pu_api_inflight}", "api", s.pu_api_few,
             s.pu_api_inflight),
    ]


class KeepAliveBackend:
    """The ``pusher`` SDK's ``AsyncIOBackend`` on one shared aiohttp session.

    The SDK's own opens a session, so a connection, per request; this one sends the
    requests the SDK built and signed the same way, on the session's keep-alive connections.
    """

    def __init__(self, client: Any, session: Any) -> None:
        self.client = client
        self.session = session

    async def send_request(self, request: Any) -> Any:
        from pusher.http import process_response

        async with self.session.request(request.method, f"{request.base_url}{request.path}",
                                        params=request.query_params, data=request.body,
                                        headers=request.headers) as resp:
            body = await resp.text("utf-8")
        return process_response(resp.status, body)


# What the last SDK publisher saw while it ran: this process's CPU % ("pct"), its triggers and
# the write system calls of the server whose pid is "pid" ("writes", from /proc/PID/io).
PUBLISHER: dict[str, float] = {}


def _server_writes() -> int | None:
    pid = PUBLISHER.get("pid")
    try:
        with open(f"/proc/{pid:.0f}/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("syscw:"))
    except (OSError, StopIteration, TypeError, ValueError):
        return None


async def _sdk_publisher(kind: str, port: int, channel: str, inflight: int, stop: asyncio.Event,
                         counter: list[int]) -> None:
    """``inflight`` SDK triggers at a time on keep-alive connections until ``stop``; counter[0] counts
    answers. ``kind`` "wsgate" is the baseline, wsgate's own ``/api/publish``."""
    if kind != "sdk":
        await _publisher(kind, port, channel, inflight, stop, counter)
        return
    import aiohttp
    import pusher
    import pusher.errors

    connector = aiohttp.TCPConnector(limit=inflight)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET, host=HOST, port=port, ssl=False,
                               backend=KeepAliveBackend, session=session)

        async def worker() -> None:
            while not stop.is_set():
                try:
                    answer = await client.trigger(channel, EVENT, DATA)  # signed by the SDK, each time
                except pusher.errors.PusherError as exc:
                    raise BenchError(f"trigger refused: {type(exc).__name__}: {exc}") from exc
                if answer != {}:
                    raise BenchError(f"trigger answered {answer!r}")
                counter[0] += 1

        cpu0, t0, writes0, count0 = time.process_time(), time.perf_counter(), _server_writes(), counter[0]
        try:
            await asyncio.gather(*(worker() for _ in range(inflight)))
        finally:
            PUBLISHER["pct"] = 100 * (time.process_time() - cpu0) / max(1e-9, time.perf_counter() - t0)
            PUBLISHER["triggers"] = counter[0] - count0
            writes1 = _server_writes()
            if writes0 is not None and writes1 is not None:
                PUBLISHER["writes"] = writes1 - writes0


def _subscriber_args(channel: str) -> list[str]:
    subscribe = json.dumps({"event": "pusher:subscribe", "data": {"channel": channel}}, separators=(",", ":"))
    # connection_established comes unasked; subscription_succeeded answers the subscribe
    return [f"--path={PATH}", f"--init={subscribe}", "--init-replies=2", f"--match={MATCH}",
            f"--fail-on={FAIL_ON}"]


class PusherRun(ChannelsRun):
    """One repeat of the pusher scenario, on the servers it starts."""

    publish = staticmethod(_sdk_publisher)

    def subscribers(self, channel: str) -> list[str]:
        return _subscriber_args(channel)

    def record(self, case: Case, name: str, result: dict[str, Any], rnd: int, work_key: str,
               parts: Sequence[str] = ()) -> None:
        if case.scenario == "pu-fanout" and name == API_TRIGGER and "pct" in PUBLISHER:
            # This process publishes on the load generator's CPU: the client side is both, and
            # the publisher's CPU is not "other load".
            result["publisher_cpu_pct"] = PUBLISHER["pct"]
            result["loadgen_only_cpu_pct"] = result.get("loadgen_cpu_pct")
            result["loadgen_cpu_pct"] = (result.get("loadgen_cpu_pct") or 0.0) + result["publisher_cpu_pct"]
            if PUBLISHER.get("writes"):
                # Frames a subscriber gets in one write: the events triggered in one loop pass.
                result["deliveries_per_write"] = PUBLISHER["triggers"] * case.conns / PUBLISHER["writes"]
            per_write = result.get("deliveries_per_write")
            self.bench.notes.append(
                f"pu-fanout {case.label} {name} [{rnd + 1}/{self.s.repeat}]: the publisher (this process) used "
                f"{result['publisher_cpu_pct']:.0f}% CPU; "
                + ("server writes not read" if per_write is None else f"{per_write:.1f} deliveries per server write"))
        PUBLISHER.clear()
        super().record(case, name, result, rnd, work_key, parts)

    def names(self, case: Case) -> list[str]:
        return {"pu-fanout": [FANOUT_BASE, API_TRIGGER], "pu-api": [API_BASE, API_TRIGGER]}[case.scenario]

    def run(self, rnd: int) -> None:
        # one server per group, so that a profile (WSGATE_BENCH_PROFILE) holds one kind of work
        profile_dir = os.environ.get("WSGATE_BENCH_PROFILE")
        for scenario in SCENARIOS:
            group = self.by_scenario.get(scenario, [])
            if not group:
                continue
            profile = None
            if profile_dir:
                os.makedirs(profile_dir, exist_ok=True)
                profile = os.path.join(profile_dir, f"wsgate-{scenario}-{self.bench.starts + 1}.prof")
            self.run_group(group, rnd, profile, "pusher")

    def pu_fanout(self, case: Case, server: ServerProcess, rnd: int) -> None:
        s = self.s
        order = [FANOUT_BASE, API_TRIGGER] if rnd % 2 == 0 else [API_TRIGGER, FANOUT_BASE]
        for name in order:
            if name == FANOUT_BASE:
                # every text frame counts; the frame is as long as the event a subscriber gets
                args = ["--mode=bcast", *self.common(server, case.conns), f"--inflight={case.inflight}",
                        *self.window(), f"--quiet={s.quiet}", f"--settle-max={s.settle_max}", "--path=/fanout",
                        f"--message={FRAME}"]
                self.sample(case, name, [server.pid], args, rnd, "deliveries")
            else:
                args = ["--mode=sub", *self.common(server, case.conns), *self.window(), f"--quiet={s.quiet}",
                        f"--settle-max={s.settle_max}", *_subscriber_args(CHANNEL)]
                PUBLISHER.clear()
                PUBLISHER["pid"] = server.pid
                self.sample(case, name, [server.pid], args, rnd, "deliveries",
                            ("sdk", server.port, CHANNEL, case.inflight))

    def pu_api(self, case: Case, server: ServerProcess, rnd: int) -> None:
        order = [API_BASE, API_TRIGGER] if rnd % 2 == 0 else [API_TRIGGER, API_BASE]
        for name in order:
            kind = "wsgate" if name == API_BASE else "sdk"
            wait_quiet([server.pid])
            try:
                result = asyncio.run(self._api_window(server, kind, f"api{case.conns}", case))
            except (BenchError, OSError) as exc:
                self.bench.fail(case, name, f"{type(exc).__name__}: {exc}", rnd)
                continue
            self.record(case, name, result, rnd, "messages")


def run_round(bench: Bench, selected: Sequence[Case], rnd: int) -> None:
    # The publishers run in this process: keep it off the server's CPU.
    saved = os.sched_getaffinity(0)
    if bench.server_cpu is not None and len(saved) > 1:
        os.sched_setaffinity(0, saved - {bench.server_cpu})
    try:
        PusherRun(bench, selected).run(rnd)
    finally:
        os.sched_setaffinity(0, saved)


def annotate(rows: Sequence[Any]) -> None:
    """Notes the table cannot show as a ratio: capacity per server core, the targets."""
    base_us = {r.case: r.server_cpu_us_per_msg for r in rows if r.scenario == "pu-fanout" and r.server == FANOUT_BASE}
    for r in rows:
        if r.scenario == "pu-api" and r.server_cpu_us_per_msg:
            per_core = 1e6 / r.server_cpu_us_per_msg
            r.flags.append(f"{per_core:,.0f}/s per server core")
            if r.server == API_TRIGGER:
                r.flags.append(f"target >= 5,000: {'met' if per_core >= 5000 else 'NOT MET'}")
            if (r.server_cpu_pct or 0) < 85:
                r.flags.append("client-bound")
        if r.scenario == "pu-fanout" and r.server_cpu_us_per_msg:
            # On a shared machine the server may not get its whole core: its CPU per delivery
            # compares the two without that.
            r.flags.append(f"{1e6 / r.server_cpu_us_per_msg:,.0f}/s per server core")
            base = base_us.get(r.case)
            if r.server == API_TRIGGER and base:
                r.flags.append(f"{base / r.server_cpu_us_per_msg:.2f}x per core")
        if r.scenario == "pu-fanout" and r.server == API_TRIGGER and r.ratio_vs_baseline is not None:
            r.flags.append(f"target >= 0.9x: {'met' if r.ratio_vs_baseline >= 0.9 else 'NOT MET'}")


if __name__ == "__main__":  # python -m bench.pusher: the scenario alone
    from bench.run import main

    raise SystemExit(main(["--only", "pusher", "--servers", "wsgate", *sys.argv[1:]]))
