"""Smoke test of the benchmark suite: it runs end to end on tiny settings.

It checks that the bench works (servers start, the C load generator builds and
talks to each of them, results are written); it does not judge speed.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Node's ws (bench/servers/node_ws.js) is in the default list when node and the pinned ws
# package are installed (scripts/test installs both); without them the bench leaves it out.
NODE = shutil.which("node") is not None and (REPO / "tests" / "node" / "node_modules" / "ws").is_dir()
SERVERS = ("wsgate", "aiohttp", "websockets", *(("node",) if NODE else ()))
MANY_SERVERS = ("wsgate", "aiohttp", *(("node",) if NODE else ()))

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("cc") is None,
    reason="the benchmark needs Linux (/proc, epoll) and a C compiler",
)


@pytest.mark.timeout(300)
def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,  # about 60 s alone; room for a loaded machine
    )
    log = f"exit status {done.returncode}\nstdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
    assert out.exists(), log
    data = json.loads(out.read_text())
    for server in SERVERS:
        rows = [
            row
            for row in data["rows"]
            if row["scenario"] == "echo" and row["server"] == server and row["metric"] == "msg_per_s"
        ]
        assert rows, f"no echo results for {server}\n{log}"
        for row in rows:
            assert (row["median"] or 0) > 0, f"{server} {row['case']}: {row}\n{log}"
    # many connections (300 in smoke mode): memory, opening, idle CPU and a broadcast to all
    for server in MANY_SERVERS:
        many = {row["metric"]: row["median"] for row in data["rows"]
                if row["scenario"] == "many" and row["server"] == server}
        assert (many.get("rss_per_conn_bytes") or 0) > 0, f"{server}: {many}\n{log}"
        assert (many.get("open_s") or 0) > 0, f"{server}: {many}\n{log}"
        assert many.get("server_cpu_pct") is not None, f"{server}: {many}\n{log}"
        assert (many.get("bcast_all_ms") or 0) > 0, f"{server}: {many}\n{log}"
    # wsgate's own scenarios: JWT on vs off, and a reconnect storm that must resume exactly
    for mode in ("anonymous", "jwt", "jwt-reused"):
        assert data["handshake"][mode]["handshakes_per_s"] > 0, data["handshake"]
        assert data["handshake"][mode]["server_cpu_us"] > 0, data["handshake"]
    assert data["resume"]["clients"] == 40
    assert 0 < data["resume"]["all_recovered_s"] < 30
    # the channels handler (Centrifugo protocol), each group against its same-run baseline
    channels = {(row["scenario"], row["server"], row["metric"]): row["median"] for row in data["rows"]
                if row["scenario"].startswith("ch-")}
    for key in [
        ("ch-fanout", "fanout plugin", "deliveries_per_s"),
        ("ch-fanout", "channels client-pub", "deliveries_per_s"),
        ("ch-fanout", "channels api-pub", "deliveries_per_s"),
        ("ch-memory", "echo idle", "rss_per_conn_at_bytes"),
        ("ch-memory", "channels 2 subs", "rss_per_conn_at_bytes"),
        ("ch-subscribe", "echo same frame", "msg_per_s"),
        ("ch-subscribe", "channels sub+unsub", "msg_per_s"),
        ("ch-api", "/api/publish aiohttp", "msg_per_s"),
        ("ch-api", "channels api cent", "msg_per_s"),
    ]:
        assert (channels.get(key) or 0) > 0, f"{key}: {channels}\n{log}"
    # the pusher handler: events triggered by the pusher SDK (signed) reach pusher-protocol subscribers
    pusher = {(row["scenario"], row["case"], row["server"], row["metric"]): row["median"] for row in data["rows"]
              if row["scenario"].startswith("pu-")}
    for key in [
        ("pu-fanout", "N=10 k=4", "fanout plugin", "deliveries_per_s"),
        ("pu-fanout", "N=10 k=4", "pusher sdk trigger", "deliveries_per_s"),
        ("pu-api", "0 subscribers k=4", "/api/publish aiohttp", "msg_per_s"),
        ("pu-api", "0 subscribers k=4", "pusher sdk trigger", "msg_per_s"),
        ("pu-api", "3 subscribers k=4", "pusher sdk trigger", "msg_per_s"),
    ]:
        assert (pusher.get(key) or 0) > 0, f"{key}: {pusher}\n{log}"
    assert done.returncode == 0, log

