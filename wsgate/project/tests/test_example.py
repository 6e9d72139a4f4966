"""Tests for handlers/example.py. Run them with `pytest` in the project folder."""

from __future__ import annotations

from pathlib import Path

from wsgate.testing import run_gateway

from handlers.example import Greeter

PROJECT = Path(__file__).resolve().parent.parent


async def test_greeter_greets() -> None:
    endpoint = {"handler": Greeter, "options": {"greeting": "hi"}}
    async with run_gateway({"/greet": endpoint}) as gw, gw.connect("/greet") as ws:
        await ws.send_str("you")
        assert await ws.receive_str() == "hi, you"


async def test_greeter_refuses_binary() -> None:
    async with run_gateway({"/greet": Greeter}) as gw, gw.connect("/greet") as ws:
        await ws.send_bytes(b"\x00")
        await ws.receive()
        assert ws.close_code == 1003


async def test_the_project_config_serves_the_greeter() -> None:
    async with run_gateway(PROJECT / "config.yaml") as gw, gw.connect("/greet") as ws:
        await ws.send_str("config")
        assert await ws.receive_str() == "hello, config"
