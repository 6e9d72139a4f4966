"""The handshake bench, this checkout against another revision, in one run.

    python -m bench.handshake_ab [--baseline main] [--rounds 5] [--window 2] [--concurrency 16]

Two wsgate processes serve ``bench.handshake``'s config side by side: ``this`` (the
working tree) and ``baseline`` (``git archive`` of ``--baseline`` unpacked in a
temporary folder, run from there by the same interpreter, so both see the same
installed packages). Both are pinned to the same CPU; the clients run on the others.
Every round measures each mode of ``bench.handshake`` (anonymous, a fresh JWT, the
same JWT) on each server in one window, the order rotated between rounds, so load
from the rest of the machine falls on both alike.

Reported per server: handshakes/s and server CPU µs per handshake (medians), and the
JWT modes against that server's own anonymous handshakes (rate, and CPU as
anonymous CPU / JWT CPU); then ``this`` against ``baseline`` per mode.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.handshake import CONFIG, handshakes, mint, request
from bench.harness import (
    LOG_DIR,
    REPO_DIR,
    BenchError,
    free_port,
    pinned,
    proc_cpu_seconds,
    standalone,
    ws_handshake_ok,
)
from wsgate.auth.jwt import VERIFIED_CACHE

MODES = ("anonymous", "jwt", "jwt-reused")
SERVERS = ("baseline", "this")


@contextmanager
def checkout(revision: str) -> Iterator[Path]:
    """``revision`` of this repository, unpacked in a temporary folder."""
    archive = subprocess.run(["git", "-C", str(REPO_DIR), "archive", revision], capture_output=True, check=False)
    if archive.returncode != 0:
        raise BenchError(f"git archive {revision}: {archive.stderr.decode().strip()}")
    with tempfile.TemporaryDirectory(prefix="wsgate-bench-baseline-") as tmp:
        with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp)


@contextmanager
def server(tree: Path, name: str, config: Path, cpu: int | None) -> Iterator[tuple[int, int]]:
    """``python -m wsgate`` run from ``tree``; (port, pid) once /ws answers."""
    port = free_port()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"wsgate-handshake-ab-{name}.log"
    command, preexec = pinned([sys.executable, "-m", "wsgate", "--config", str(config), "--port", str(port)], cpu)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=tree, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec)
    try:
        deadline = time.monotonic() + 30
        while not ws_handshake_ok(port, "/ws"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise BenchError(f"wsgate ({name}) did not start; see {log_path}")
            time.sleep(0.1)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def measure(baseline: str, rounds: int, window: float, concurrency: int, cpu: int | None) -> dict[str, Any]:
    fresh = mint(VERIFIED_CACHE * 5)  # more than a server remembers: every signature is checked
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wsgate-bench-ab-")))
        config = tmp / "config.yaml"
        config.write_text(CONFIG)
        trees = {"baseline": stack.enter_context(checkout(baseline)), "this": REPO_DIR}
        procs = {name: stack.enter_context(server(trees[name], name, config, cpu)) for name in SERVERS}
        payloads = {
            (name, mode): itertools.cycle(
                [request(port, "/ws", None)] if mode == "anonymous"
                else [request(port, "/ws-jwt", fresh[0])] if mode == "jwt-reused"
                else [request(port, "/ws-jwt", token) for token in fresh]
            )
            for name, (port, _) in procs.items() for mode in MODES
        }
        for name, (port, _) in procs.items():  # warm-up
            asyncio.run(handshakes(port, payloads[name, "jwt"], concurrency, 0.3))
        cases = list(payloads)
        samples: dict[tuple[str, str], list[tuple[float, float]]] = {case: [] for case in cases}
        for rnd in range(rounds):
            shift = (rnd * 2 + 1) % len(cases)  # odd, so each server's modes move too
            for name, mode in cases[shift:] + cases[:shift]:
                port, pid = procs[name]
                cpu0, t0 = proc_cpu_seconds(pid), time.monotonic()
                count = asyncio.run(handshakes(port, payloads[name, mode], concurrency, window))
                elapsed, used = time.monotonic() - t0, proc_cpu_seconds(pid) - cpu0
                samples[name, mode].append((count / elapsed, used * 1e6 / max(count, 1)))
                print(f"  round {rnd + 1} {name:<8} {mode:<10} {count / elapsed:8,.0f} handshakes/s, "
                      f"server {used * 1e6 / max(count, 1):6,.0f} µs CPU each", file=sys.stderr)
    result: dict[str, Any] = {"baseline_revision": baseline, "rounds": rounds, "window_s": window,
                              "concurrency": concurrency}
    for name in SERVERS:
        result[name] = {mode: {"handshakes_per_s": statistics.median(v[0] for v in samples[name, mode]),
                               "server_cpu_us": statistics.median(v[1] for v in samples[name, mode]),
                               "samples": samples[name, mode]} for mode in MODES}
        anonymous = result[name]["anonymous"]
        for mode in ("jwt", "jwt-reused"):
            r = result[name][mode]
            r["rate_ratio"] = r["handshakes_per_s"] / anonymous["handshakes_per_s"]
            r["cpu_ratio"] = anonymous["server_cpu_us"] / r["server_cpu_us"]
    return result


def report(result: dict[str, Any]) -> str:
    lines = [f"baseline = {result['baseline_revision']}, this = the working tree; medians of {result['rounds']} rounds"]
    for name in SERVERS:
        r = result[name]
        lines.append(f"{name}: anonymous {r['anonymous']['handshakes_per_s']:,.0f}/s, "
                     f"{r['anonymous']['server_cpu_us']:,.0f} µs CPU each")
        for mode in ("jwt", "jwt-reused"):
            m = r[mode]
            lines.append(f"  {mode}: {m['handshakes_per_s']:,.0f}/s ({m['rate_ratio']:.2f}x), "
                         f"{m['server_cpu_us']:,.0f} µs CPU each -> {m['cpu_ratio']:.2f}x of anonymous")
    for mode in MODES:
        base, this = result["baseline"][mode], result["this"][mode]
        cpu = this["server_cpu_us"] / base["server_cpu_us"]
        lines.append(f"this vs baseline, {mode}: CPU per handshake {cpu:.2f}x, "
                     f"rate {this['handshakes_per_s'] / base['handshakes_per_s']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.handshake_ab", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="main", help="git revision to compare against (default: main)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=16)
    return standalone(parser, argv, lambda a: measure(a.baseline, a.rounds, a.window, a.concurrency, a.server_cpu),
                      report)


if __name__ == "__main__":
    raise SystemExit(main())
