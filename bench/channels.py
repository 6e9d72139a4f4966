"""The ``channels`` scenario: the Centrifugo-protocol handler, each figure against a
baseline measured in the same run (see bench/README.md, "Channels").

Four groups of rows, each its own scenario name in the table and the JSON:

- ``ch-fanout``: N subscribers of one channel; publications from a client on the
  channel (``publish: subscribers``, the publisher subscribed too) or from the server
  API (``cent.AsyncClient``, keep-alive); deliveries/s and server CPU per delivery, vs
  the ``/fanout`` plugin endpoint (``Context.broadcast``) with the same frame size.
  Also over Redis with two instances, vs the same plugin on one instance.
- ``ch-memory``: N connections, each connected and subscribed to its own channel and
  a shared one; RSS per connection vs an idle echo connection.
- ``ch-subscribe``: subscribe + unsubscribe pairs per second (one frame, one reply
  frame), vs the echo of the same frame.
- ``ch-api``: publishes/s from ``cent.AsyncClient`` over keep-alive, to a channel with
  no subscribers and with a few, vs wsgate's own ``POST /api/publish`` from aiohttp.

Set ``WSGATE_BENCH_PROFILE=DIR`` to run the memory-broker wsgate of the fan-out cases
under cProfile with a CPU-time clock (its figures are then not comparable); the stats go to
``DIR/wsgate-channels-<n>.prof``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from bench.harness import (
    HOST,
    LOG_DIR,
    SERVERS,
    BenchError,
    ServerProcess,
    ServerSpec,
    pinned,
    proc_cpu_seconds,
    tail,
    wait_quiet,
)

if TYPE_CHECKING:
    from bench.run import Bench, Case, Settings

PATH = "/connection/websocket"
API_KEY = "bench-channels-key"  # options.api_key of the endpoint in wsgate-bench.yaml
API_TOKEN = "bench-api-token"  # api.token in wsgate-bench.yaml, for POST /api/publish
CHANNEL = "ch"
DATA = "a" * 32
CONNECT = '{"id":1,"connect":{}}'
PUBLISH = json.dumps({"id": 3, "publish": {"channel": CHANNEL, "data": DATA}}, separators=(",", ":"))
# what a subscriber gets for each publication (history 0: no offset)
PUSH = json.dumps({"push": {"channel": CHANNEL, "pub": {"data": DATA}}}, separators=(",", ":"))
MATCH = '"pub":'
FAIL_ON = '"error":'
PAIR = '{"id":2,"subscribe":{"channel":"s{i}"}}\n{"id":3,"unsubscribe":{"channel":"s{i}"}}'

SCENARIOS = ("ch-fanout", "ch-memory", "ch-subscribe", "ch-api")
FANOUT_BASE = "fanout plugin"
CLIENT_PUB = "channels client-pub"
API_PUB = "channels api-pub"
CLIENT_PUB_X2 = "channels client-pub redis x2"
API_PUB_X2 = "channels api-pub redis x2"
MEMORY_BASE = "echo idle"
MEMORY = "channels 2 subs"
SUB_BASE = "echo same frame"
SUB = "channels sub+unsub"
API_BASE = "/api/publish aiohttp"
API_CENT = "channels api cent"
API_AIOHTTP = "channels api aiohttp"
BASELINES = {"ch-fanout": FANOUT_BASE, "ch-memory": MEMORY_BASE, "ch-subscribe": SUB_BASE, "ch-api": API_BASE}
ROW_SERVERS = (FANOUT_BASE, CLIENT_PUB, API_PUB, CLIENT_PUB_X2, API_PUB_X2, MEMORY_BASE, MEMORY, SUB_BASE, SUB,
               API_BASE, API_CENT, API_AIOHTTP)


def cases(s: Settings) -> list[Case]:
    from bench.run import Case

    return [
        Case("ch-fanout", f"N={s.ch_receivers:,} k={s.ch_inflight}", "bcast", s.ch_receivers, s.ch_inflight,
             len(PUSH)),
        Case("ch-memory", f"N={s.ch_mem_conns:,} p{{i}}+all", "idle", s.ch_mem_conns, 0, 0, s.ch_mem_conns),
        Case("ch-subscribe", f"c={s.ch_sub_conns} k={s.ch_sub_inflight}", "echo", s.ch_sub_conns,
             s.ch_sub_inflight),
        Case("ch-api", f"0 subscribers k={s.ch_api_inflight}", "api", 0, s.ch_api_inflight),
        Case("ch-api", f"{s.ch_api_few} subscribers k={s.ch_api_inflight}", "api", s.ch_api_few,
             s.ch_api_inflight),
    ]


def _wsgate_command(profile: str | None) -> Any:
    base = SERVERS["wsgate"].command
    if profile is None:
        return base

    # CPU time, not wall time: on a busy machine a descheduled server would charge the
    # wait to whatever function it was in.
    code = (
        "import cProfile, runpy, sys, time\n"
        "sys.argv = ['wsgate', *sys.argv[2:]]\n"
        "profile = cProfile.Profile(time.process_time)\n"
        "profile.enable()\n"
        "try:\n"
        "    runpy.run_module('wsgate', run_name='__main__', alter_sys=True)\n"
        "finally:\n"
        "    profile.disable()\n"
        "    profile.dump_stats(PROFILE)\n"
    )

    def command(port: int) -> list[str]:
        argv = base(port)
        assert argv[1:3] == ["-m", "wsgate"]
        return [argv[0], "-c", code.replace("PROFILE", repr(profile)), "wsgate", *argv[3:]]

    return command


def _subscriber_args(channel: str = CHANNEL) -> list[str]:
    return [f"--init={CONNECT}", f'--init={{"id":2,"subscribe":{{"channel":"{channel}"}}}}', "--init-replies=2",
            f"--match={MATCH}", f"--fail-on={FAIL_ON}"]


async def _publisher(kind: str, port: int, channel: str, inflight: int, stop: asyncio.Event,
                     counter: list[int]) -> None:
    """``inflight`` publishers on keep-alive connections until ``stop``; counter[0] counts replies."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=inflight)
    async with aiohttp.ClientSession(connector=connector) as session:
        if kind == "cent":
            from cent import AsyncClient, PublishRequest

            client = AsyncClient(f"http://{HOST}:{port}{PATH}/api", API_KEY, session=session)
            request = PublishRequest(channel=channel, data=DATA)

            async def one() -> None:
                await client.publish(request)
        else:
            if kind == "channels":
                url, headers = f"http://{HOST}:{port}{PATH}/api/publish", {"X-API-Key": API_KEY}
                body = {"channel": channel, "data": DATA}
            else:  # wsgate's own publish API, to a chat room nobody is in
                url, headers = f"http://{HOST}:{port}/api/publish", {"Authorization": f"Bearer {API_TOKEN}"}
                body = {"endpoint": "/chat", "room": channel, "data": DATA}

            async def one() -> None:
                async with session.post(url, json=body, headers=headers) as resp:
                    text = await resp.read()
                    if resp.status != 200 or b'"error"' in text:
                        raise BenchError(f"publish answered {resp.status}: {text[:200]!r}")

        async def worker() -> None:
            while not stop.is_set():
                await one()
                counter[0] += 1

        await asyncio.gather(*(worker() for _ in range(inflight)))


Publisher = Callable[[str, int, str, int, asyncio.Event, list[int]], Awaitable[None]]


async def _loadgen_with_publisher(bench: Bench, args: list[str], publisher: tuple[str, int, str, int] | None,
                                  limit: float, publish: Publisher = _publisher) -> dict[str, Any]:
    """The load generator (``sub`` mode prints ready, then measures) with ``publish`` running meanwhile."""
    if publisher is not None and publisher[0] == "cent":
        # Imported before the window opens: cent's first import (pydantic models) can take
        # longer than a smoke window on a busy machine.
        import cent  # noqa: F401
    command, preexec = pinned([str(bench.loadgen), *args], bench.loadgen_cpu)
    proc = await asyncio.create_subprocess_exec(*command, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                preexec_fn=preexec)
    assert proc.stdout is not None
    assert proc.stderr is not None
    stop = asyncio.Event()
    counter = [0]
    task: asyncio.Task[None] | None = None
    last = ""
    try:
        async with asyncio.timeout(limit):
            while line := (await proc.stdout.readline()).decode():
                last = line.strip() or last
                if publisher is not None and task is None and '"ready"' in line:
                    task = asyncio.create_task(publish(*publisher, stop, counter))
            stop.set()
            if task is not None:
                await task
            await proc.wait()
    except TimeoutError as exc:
        raise BenchError(f"load generator timed out after {limit:.0f}s") from exc
    finally:
        stop.set()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if task is not None and not task.done():
            task.cancel()
    try:
        result: dict[str, Any] = json.loads(last)
    except json.JSONDecodeError as exc:
        err = (await proc.stderr.read()).decode().strip()
        raise BenchError(f"load generator exited with status {proc.returncode}: {err}") from exc
    if "error" in result:
        raise BenchError(f"load generator: {result['error']}")
    result["publishes"] = counter[0]
    return result


class ChannelsRun:
    """One repeat of the channels scenario, on the servers it starts."""

    # the server API publishers: (kind, port, channel, in flight, stop, counter)
    publish: Publisher = staticmethod(_publisher)

    def __init__(self, bench: Bench, selected: Sequence[Case]) -> None:
        self.bench = bench
        self.s = bench.s
        self.cases = {(c.scenario, c.label): c for c in selected}
        self.by_scenario: dict[str, list[Case]] = {}
        for c in selected:
            self.by_scenario.setdefault(c.scenario, []).append(c)

    def timeout(self) -> float:
        s = self.s
        return s.setup_timeout + s.settle_max + s.warmup + s.window + 4 * s.rss_settle + 30

    def common(self, server: ServerProcess, conns: int) -> list[str]:
        s = self.s
        return [f"--port={server.port}", f"--conns={conns}", f"--server-pid={server.pid}",
                f"--timeout={s.setup_timeout}", f"--max-pending={s.max_pending}"]

    def subscribers(self, channel: str) -> list[str]:
        """The load generator's path and frames that make each connection a subscriber of ``channel``."""
        return [f"--path={PATH}", *_subscriber_args(channel)]

    def window(self) -> list[str]:
        return [f"--warmup={self.s.warmup}", f"--duration={self.s.window}"]

    def record(self, case: Case, name: str, result: dict[str, Any], rnd: int, work_key: str,
               parts: Sequence[str] = ()) -> None:
        work, cpu = result.get(work_key), result.get("server_cpu_s")
        if work and cpu is not None:
            result["server_cpu_us_per_msg"] = cpu * 1e6 / work
        each = result.get("server_cpu_each_pct") or []
        if len(parts) > 1 and len(each) == len(parts):
            result["server_cpu_parts_pct"] = dict(zip(parts, each, strict=True))
        result["other_cpu_pct"] = self.bench.other_load(result)
        self.bench.add(case, name, result, rnd)

    def sample(self, case: Case, name: str, pids: Sequence[int], args: list[str], rnd: int, work_key: str,
               publisher: tuple[str, int, str, int] | None = None, parts: Sequence[str] = ()) -> None:
        wait_quiet(pids)
        try:
            result = asyncio.run(_loadgen_with_publisher(self.bench, args, publisher, self.timeout(), self.publish))
        except BenchError as exc:
            self.bench.fail(case, name, str(exc), rnd)
            return
        self.record(case, name, result, rnd, work_key, parts)

    def start(self, name: str, env: dict[str, str] | None = None, profile: str | None = None) -> ServerProcess:
        self.bench.starts += 1
        spec = SERVERS["wsgate"]
        if profile is not None:
            spec = ServerSpec(name="wsgate", command=_wsgate_command(profile), echo_path=spec.echo_path)
        server = ServerProcess(spec, self.bench.server_cpu, LOG_DIR / f"wsgate-{name}-{self.bench.starts}.log", env)
        server.start()
        return server

    def fail_all(self, targets: Sequence[tuple[Case, str]], error: str, rnd: int) -> None:
        for case, name in targets:
            self.bench.fail(case, name, error, rnd)

    # --- the groups -------------------------------------------------------------------------

    def run(self, rnd: int) -> None:
        main = [c for sc in ("ch-fanout", "ch-subscribe", "ch-api") for c in self.by_scenario.get(sc, [])]
        profile_dir = os.environ.get("WSGATE_BENCH_PROFILE")
        groups = [main]
        if profile_dir and self.by_scenario.get("ch-fanout"):
            # the profiled server runs the fan-out cases alone
            groups = [self.by_scenario["ch-fanout"], [c for c in main if c.scenario != "ch-fanout"]]
        for group in groups:
            if group:
                profile = None
                if profile_dir and group[0].scenario == "ch-fanout":
                    os.makedirs(profile_dir, exist_ok=True)
                    profile = os.path.join(profile_dir, f"wsgate-channels-{self.bench.starts + 1}.prof")
                self.run_group(group, rnd, profile)
        for case in self.by_scenario.get("ch-memory", []):
            self.ch_memory(case, rnd)
        if self.by_scenario.get("ch-fanout") and self.s.ch_redis:
            self.fanout_redis(self.by_scenario["ch-fanout"], rnd)

    def run_group(self, group: Sequence[Case], rnd: int, profile: str | None, endpoint: str = "channels") -> None:
        """Each case of ``group`` against one wsgate serving ``endpoint``, by the method named as its scenario."""
        try:
            server = self.start(endpoint, {"WSGATE_BROKER": "memory"}, profile)
        except BenchError as exc:
            self.fail_all([(c, n) for c in group for n in self.names(c)], str(exc), rnd)
            return
        try:
            for case in group:
                if not server.alive():
                    self.fail_all([(case, n) for n in self.names(case)],
                                  f"wsgate exited:\n{tail(server.log_path)}", rnd)
                    continue
                getattr(self, case.scenario.replace("-", "_"))(case, server, rnd)
        finally:
            server.stop()

    def names(self, case: Case) -> list[str]:
        return {
            "ch-fanout": [FANOUT_BASE, CLIENT_PUB, API_PUB],
            "ch-subscribe": [SUB_BASE, SUB],
            "ch-api": [API_BASE, API_CENT, API_AIOHTTP],
            "ch-memory": [MEMORY_BASE, MEMORY],
        }[case.scenario]

    def ch_fanout(self, case: Case, server: ServerProcess, rnd: int) -> None:
        s = self.s
        bcast = ["--mode=bcast", *self.common(server, case.conns), f"--inflight={case.inflight}", *self.window(),
                 f"--quiet={s.quiet}", f"--settle-max={s.settle_max}"]
        order = [FANOUT_BASE, CLIENT_PUB, API_PUB]
        if rnd % 2:
            order.reverse()
        for name in order:
            if name == FANOUT_BASE:
                # every text frame counts; the frame is as long as the push a channels subscriber gets
                args = [*bcast, "--path=/fanout", f"--message={PUSH}"]
                self.sample(case, name, [server.pid], args, rnd, "deliveries")
            elif name == CLIENT_PUB:
                args = [*bcast, f"--path={PATH}", *_subscriber_args(), f"--message={PUBLISH}"]
                self.sample(case, name, [server.pid], args, rnd, "deliveries")
            else:
                args = ["--mode=sub", *self.common(server, case.conns), *self.window(), f"--quiet={s.quiet}",
                        f"--settle-max={s.settle_max}", f"--path={PATH}", *_subscriber_args()]
                self.sample(case, name, [server.pid], args, rnd, "deliveries",
                            ("cent", server.port, CHANNEL, case.inflight))

    def fanout_redis(self, fanout_cases: Sequence[Case], rnd: int) -> None:
        import shutil

        targets = [(c, n) for c in fanout_cases for n in (CLIENT_PUB_X2, API_PUB_X2)]
        if shutil.which("redis-server") is None:
            note = "ch-fanout redis x2 skipped: redis-server is not installed"
            if note not in self.bench.notes:
                self.bench.notes.append(note)
            return
        servers: list[ServerProcess] = []
        try:
            redis = self.bench.start_redis()
            redis.flush()
            for name in ("channels-redis-A", "channels-redis-B"):
                servers.append(self.start(name, {"WSGATE_BROKER": redis.url}))
        except BenchError as exc:
            for server in servers:
                server.stop()
            self.fail_all(targets, str(exc), rnd)
            return
        inst_a, inst_b = servers
        pids = [inst_a.pid, inst_b.pid, redis.pid]
        parts = ["wsgate A", "wsgate B", "redis"]
        extra = [f"--port2={inst_b.port}", f"--extra-pid={inst_b.pid}", f"--extra-pid={redis.pid}"]
        s = self.s
        try:
            for case in fanout_cases:
                if not (inst_a.alive() and inst_b.alive() and redis.alive()):
                    self.fail_all([(case, n) for n in (CLIENT_PUB_X2, API_PUB_X2)], "a process of the redis x2 "
                                  f"setup exited:\n{tail(inst_a.log_path)}", rnd)
                    continue
                common = [*self.common(inst_a, case.conns), *extra, *self.window(), f"--quiet={s.quiet}",
                          f"--settle-max={s.settle_max}", f"--path={PATH}", *_subscriber_args()]
                args = ["--mode=bcast", *common, f"--inflight={case.inflight}", f"--message={PUBLISH}"]
                self.sample(case, CLIENT_PUB_X2, pids, args, rnd, "deliveries", parts=parts)
                self.sample(case, API_PUB_X2, pids, ["--mode=sub", *common], rnd, "deliveries",
                            ("cent", inst_a.port, CHANNEL, case.inflight), parts)
        finally:
            for server in servers:
                server.stop()

    def ch_memory(self, case: Case, rnd: int) -> None:
        s = self.s
        order = [MEMORY_BASE, MEMORY] if rnd % 2 == 0 else [MEMORY, MEMORY_BASE]
        for name in order:
            try:
                server = self.start("channels-memory")
            except BenchError as exc:
                self.bench.fail(case, name, str(exc), rnd)
                continue
            try:
                args = ["--mode=idle", *self.common(server, case.conns), f"--rss-at={case.conns}",
                        f"--rss-settle={s.rss_settle}", f"--sources={s.ch_mem_sources}"]
                if name == MEMORY_BASE:
                    args.append("--path=/ws")
                else:
                    args += [f"--path={PATH}", f"--init={CONNECT}",
                             '--init={"id":2,"subscribe":{"channel":"p{i}"}}',
                             '--init={"id":3,"subscribe":{"channel":"all"}}', "--init-replies=3",
                             f"--fail-on={FAIL_ON}"]
                self.sample(case, name, [server.pid], args, rnd, "conns")
            finally:
                server.stop()

    def ch_subscribe(self, case: Case, server: ServerProcess, rnd: int) -> None:
        echo = ["--mode=echo", *self.common(server, case.conns), f"--inflight={case.inflight}", *self.window(),
                f"--message={PAIR}"]
        order = [SUB_BASE, SUB] if rnd % 2 == 0 else [SUB, SUB_BASE]
        for name in order:
            if name == SUB_BASE:
                args = [*echo, "--path=/ws"]
            else:
                args = [*echo, f"--path={PATH}", f"--init={CONNECT}", "--init-replies=1", f"--fail-on={FAIL_ON}"]
            self.sample(case, name, [server.pid], args, rnd, "messages")

    def ch_api(self, case: Case, server: ServerProcess, rnd: int) -> None:
        order = [API_BASE, API_CENT, API_AIOHTTP]
        if rnd % 2:
            order.reverse()
        for name in order:
            kind = {API_BASE: "wsgate", API_CENT: "cent", API_AIOHTTP: "channels"}[name]
            channel = f"api{case.conns}"
            wait_quiet([server.pid])
            try:
                result = asyncio.run(self._api_window(server, kind, channel, case))
            except (BenchError, OSError) as exc:
                self.bench.fail(case, name, f"{type(exc).__name__}: {exc}", rnd)
                continue
            self.record(case, name, result, rnd, "messages")

    async def _api_window(self, server: ServerProcess, kind: str, channel: str, case: Case) -> dict[str, Any]:
        """Publishes in a measured window; with subscribers held by the load generator meanwhile."""
        s = self.s
        sub: asyncio.Task[dict[str, Any]] | None = None
        if case.conns and kind != "wsgate":
            args = ["--mode=sub", *self.common(server, case.conns), f"--warmup={s.warmup}",
                    f"--duration={s.window + 1.0}", f"--quiet={s.quiet}", f"--settle-max={s.settle_max}",
                    *self.subscribers(channel)]
            ready = asyncio.Event()
            sub = asyncio.create_task(self._held(args, ready))
            async with asyncio.timeout(s.setup_timeout + s.settle_max):
                await ready.wait()
        stop = asyncio.Event()
        counter = [0]
        task = asyncio.create_task(self.publish(kind, server.port, channel, case.inflight, stop, counter))
        try:
            await asyncio.sleep(s.warmup)
            if task.done():
                task.result()
            c0, cpu0, t0 = counter[0], proc_cpu_seconds(server.pid), time.perf_counter()
            lg0 = time.process_time()
            await asyncio.sleep(s.window)
            c1, cpu1, t1 = counter[0], proc_cpu_seconds(server.pid), time.perf_counter()
            lg1 = time.process_time()
        finally:
            stop.set()
            await task
        elapsed = t1 - t0
        result: dict[str, Any] = {
            "messages": c1 - c0, "msg_per_s": (c1 - c0) / elapsed, "window_s": elapsed,
            "server_cpu_s": cpu1 - cpu0, "server_cpu_pct": 100 * (cpu1 - cpu0) / elapsed,
            "loadgen_cpu_pct": 100 * (lg1 - lg0) / elapsed,  # this process: the publisher
        }
        if sub is not None:
            held = await sub
            result["deliveries"] = held.get("deliveries")
        return result

    async def _held(self, args: list[str], ready: asyncio.Event) -> dict[str, Any]:
        command, preexec = pinned([str(self.bench.loadgen), *args], self.bench.loadgen_cpu)
        proc = await asyncio.create_subprocess_exec(*command, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, preexec_fn=preexec)
        assert proc.stdout is not None
        assert proc.stderr is not None
        last = ""
        while line := (await proc.stdout.readline()).decode():
            if '"ready"' in line:
                ready.set()
            last = line.strip() or last
        await proc.wait()
        try:
            result: dict[str, Any] = json.loads(last)
        except json.JSONDecodeError as exc:
            raise BenchError(f"load generator: {(await proc.stderr.read()).decode().strip()}") from exc
        if "error" in result:
            raise BenchError(f"load generator: {result['error']}")
        return result


def run_round(bench: Bench, selected: Sequence[Case], rnd: int) -> None:
    # The publishers run in this process: keep it off the server's CPU.
    saved = os.sched_getaffinity(0)
    if bench.server_cpu is not None and len(saved) > 1:
        os.sched_setaffinity(0, saved - {bench.server_cpu})
    try:
        ChannelsRun(bench, selected).run(rnd)
    finally:
        os.sched_setaffinity(0, saved)


def annotate(rows: Sequence[Any]) -> None:
    """Notes the table cannot show as a ratio: bytes above the echo connection, API capacity per core."""
    base_mem = {r.case: r.median for r in rows if r.scenario == "ch-memory" and r.server == MEMORY_BASE
                and r.metric == "rss_per_conn_at_bytes"}
    for r in rows:
        if r.scenario == "ch-memory" and r.server == MEMORY and r.metric == "rss_per_conn_at_bytes":
            base = base_mem.get(r.case)
            if base is not None and r.median is not None:
                r.flags.append(f"+{r.median - base:,.0f} B vs echo (target <= +1,024)")
        if r.scenario == "ch-api" and r.server_cpu_us_per_msg:
            r.flags.append(f"{1e6 / r.server_cpu_us_per_msg:,.0f}/s per server core")
            if (r.server_cpu_pct or 0) < 85:
                r.flags.append("client-bound")
        if r.scenario == "ch-subscribe" and r.server == SUB and r.server_cpu_us_per_msg:
            r.flags.append(f"{1e6 / r.server_cpu_us_per_msg:,.0f} pairs/s per server core")


if __name__ == "__main__":  # python -m bench.channels: the scenario alone
    from bench.run import main

    raise SystemExit(main(["--only", "channels", *sys.argv[1:]]))
