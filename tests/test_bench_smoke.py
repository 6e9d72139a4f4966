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
SERVERS = ("wsgate", "aiohttp", "websockets")

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("cc") is None,
    reason="the benchmark needs Linux (/proc, epoll) and a C compiler",
)


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
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
    assert done.returncode == 0, log


def test_handshake_bench_smoke(tmp_path: Path) -> None:
    """JWT on vs off: both endpoints admit the bench's handshakes, and both are measured."""
    out = tmp_path / "handshake.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.handshake", "--rounds", "1", "--window", "0.3", "--concurrency", "2",
         "--json", str(out)],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    data = json.loads(out.read_text())
    for mode in ("anonymous", "jwt", "jwt-reused"):
        assert data[mode]["handshakes_per_s"] > 0, data
        assert data[mode]["server_cpu_us"] > 0, data
    assert data["jwt"]["cpu_ratio"] > 0


def test_resume_bench_smoke(tmp_path: Path) -> None:
    """The reconnect storm: every client resumes exactly (the bench raises otherwise)."""
    out = tmp_path / "resume.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.resume", "--clients", "40", "--rooms", "4", "--behind", "20",
         "--json", str(out)],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["clients"] == 40
    assert 0 < data["all_recovered_s"] < 30
