"""examples/ticker as a user gets it: pip-installed, found by its entry-point name.

scripts/test installs the package into the test environment (``pip install -e
examples/ticker``); these tests run it through a real ``python -m wsgate`` process.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def ticker_installed() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="wsgate.handlers")}
    if names.get("ticker") != "wsgate_ticker:Ticker":
        pytest.fail(
            "the example plugin is not installed (no 'ticker' in the wsgate.handlers entry points): "
            "run the README's test command, bash scripts/test, or pip install -e examples/ticker"
        )


async def _ticks(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[int]:
    numbers = []
    for _ in range(count):
        message = json.loads(await ws.receive_str())
        assert message["type"] == "tick"
        assert set(message) == {"type", "n"}
        numbers.append(message["n"])
    return numbers


async def test_ticker_is_served_by_its_registered_name(
    write_config: Callable[..., Path], wsgate_process: Callable[..., Any]
) -> None:
    config = write_config(
        "endpoints:\n"
        "  - path: /ticks\n"
        "    handler: ticker\n"
        "    options: {interval_ms: 50, start: 100}\n"
        "    heartbeat: {interval: 0.2, timeout: 1}\n"
    )
    gw = wsgate_process(config)
    gw.wait_for_line(r"listening on .*\(/ticks ticker\)")
    async with asyncio.timeout(10), aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{gw.ws_url}/ticks") as first:
            early = await _ticks(first, 3)
            assert early[0] >= 100
            assert early == list(range(early[0], early[0] + 3)), "ticks count up by one"
            async with session.ws_connect(f"{gw.ws_url}/ticks") as second:
                later = await _ticks(second, 3)
                seen_by_first = await _ticks(first, later[-1] - early[-1])
            # One counter per endpoint, broadcast to everyone: the second client joined
            # mid-count and got the same numbers as the first.
            assert later == list(range(later[0], later[0] + 3))
            assert later[0] > early[-1]
            assert seen_by_first == list(range(early[-1] + 1, later[-1] + 1))
        gw.signal(signal.SIGTERM)
        assert await asyncio.to_thread(gw.proc.wait, 10) == 0
    # The background task is cancelled at shutdown without an error.
    assert "Traceback" not in gw.output, gw.output


async def test_a_bad_ticker_option_is_reported_with_its_line(
    write_config: Callable[..., Path], wsgate_process: Callable[..., Any]
) -> None:
    config = write_config(
        "# the ticker, too fast\n"
        "endpoints:\n"
        "  - path: /ticks\n"
        "    handler: ticker\n"
        "    options:\n"
        "      interval_ms: 1\n"
    )
    gw = wsgate_process(config, wait=False)
    assert await asyncio.to_thread(gw.proc.wait, 20) == 2
    assert f"{config}:6:7: endpoints[0].options.interval_ms: Input should be greater than or equal to 10" \
        in gw.output
    assert "listening" not in gw.output


async def test_unknown_ticker_options_name_the_allowed_ones(write_config: Callable[..., Path]) -> None:
    config = write_config("endpoints:\n  - {path: /t, handler: ticker, options: {interval: 5}}\n")
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "wsgate", "check", "--config", str(config)],
        capture_output=True, text=True, timeout=20,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"{config}:2:43: endpoints[0].options.interval: unknown key; did you mean 'interval_ms'? "
        "allowed keys: interval_ms, start"
    )


async def test_schema_includes_the_ticker_options() -> None:
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "wsgate", "schema"], capture_output=True, text=True, timeout=20,
    )
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    endpoint = schema["$defs"]["EndpointSpec"]
    branches = {b["if"]["properties"]["handler"]["const"]: b["then"]["properties"]["options"]
                for b in endpoint["allOf"]}
    options = branches["ticker"]
    assert options["additionalProperties"] is False
    assert options["properties"]["interval_ms"]["minimum"] == 10
    assert options["properties"]["interval_ms"]["default"] == 1000
    assert options["properties"]["start"]["default"] == 0
    assert "ticker" in endpoint["properties"]["handler"]["examples"]


def test_package_metadata_declares_the_entry_point() -> None:
    """What pip installed is what examples/ticker/pyproject.toml declares."""
    import tomllib

    project = tomllib.loads((ROOT / "examples" / "ticker" / "pyproject.toml").read_text())["project"]
    assert project["name"] == "wsgate-ticker"
    assert "wsgate" in project["dependencies"]
    assert project["entry-points"]["wsgate.handlers"] == {"ticker": "wsgate_ticker:Ticker"}
    (ep,) = [ep for ep in entry_points(group="wsgate.handlers") if ep.name == "ticker"]
    assert ep.dist is not None
    assert ep.dist.name == "wsgate-ticker"
