"""``Connection`` is the handler's read-only view of one client's handshake: the gateway
makes it, and a handler can change only its own ``state``."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import pytest

from wsgate import Connection, Handler, Handshake, Message
from wsgate.testing import run_gateway

TIMEOUT = 10
HANDSHAKE = ["id", "path", "remote", "headers", "query", "subprotocol", "user", "claims"]


def test_a_connection_is_made_by_the_gateway_only() -> None:
    assert list(inspect.signature(Connection).parameters) == []
    with pytest.raises(TypeError, match=r"made by the gateway.*wsgate\.testing\.run_gateway"):
        Connection()


class Tamper(Handler):
    """Tries to change every handshake attribute, and the mappings inside them."""

    handshake_claims = "untried"

    async def authorize(self, handshake: Handshake) -> None:
        try:
            handshake.claims["role"] = "admin"  # type: ignore[index]
        except TypeError:
            self.handshake_claims = "read-only"
        else:
            self.handshake_claims = "changed"

    async def on_connect(self, conn: Connection) -> None:
        report: dict[str, Any] = {
            "seen": {"user": conn.user, "claims": dict(conn.claims), "room": conn.query.get("room")},
            "handshake.claims[...]": self.handshake_claims,
        }
        for name in ("headers", "query", "claims"):
            try:
                getattr(conn, name)["role"] = "admin"
            except TypeError:
                report[f"{name}[...]"] = "read-only"
            else:
                report[f"{name}[...]"] = "changed"
        for name in HANDSHAKE:
            try:
                setattr(conn, name, "forged")
            except AttributeError:
                report[name] = "read-only"
            else:
                report[name] = "changed"
        conn.state = {"mine": True}
        report["state"] = conn.state
        await conn.send_json(report)

    async def on_message(self, conn: Connection, message: Message) -> None:
        pass


async def test_a_handler_cannot_change_what_the_handshake_said(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "viewauth.py").write_text(
        "from wsgate import Identity\n"
        "async def check(handshake):\n"
        "    return Identity(handshake.token, {'role': 'reader'})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    endpoints = {"/t": {"handler": Tamper, "auth": "names"}}
    async with (asyncio.timeout(TIMEOUT), run_gateway(endpoints, auth={"names": {"python": "viewauth:check"}}) as gw,
                gw.connect("/t?room=lobby", headers={"Authorization": "Bearer ann"}) as ws):
        report = await ws.receive_json()
    assert {name: report[name] for name in HANDSHAKE} == dict.fromkeys(HANDSHAKE, "read-only")
    assert {report[f"{name}[...]"] for name in ("headers", "query", "claims", "handshake.claims")} == {"read-only"}
    assert report["state"] == {"mine": True}
    assert report["seen"] == {"user": "ann", "claims": {"role": "reader"}, "room": "lobby"}
