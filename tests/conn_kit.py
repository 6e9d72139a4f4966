"""Connections without a socket, for tests that drive the hub or an endpoint directly:
each records the frames delivered to it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wsgate.connection import Connection
from wsgate.gateway.frames import TEXT

__all__ = ["PATH", "Client", "Link", "text_of"]

PATH = "/room"


class Link:
    """The session side of a Connection: open, and never closed by the code under test."""

    closing = False

    def close(self, code: int, reason: str) -> None:
        raise AssertionError("the code under test closed a connection")

    def handshake_query(self) -> Mapping[str, str]:
        return {}


def text_of(frame: bytes) -> str:
    """The text of one unmasked, unfragmented text frame (checked to be exactly that)."""
    assert frame[0] == 0x80 | TEXT, frame
    n, start = frame[1], 2
    if n == 126:
        n, start = int.from_bytes(frame[2:4]), 4
    assert len(frame) == start + n
    return frame[start:].decode()


@dataclass(eq=False)
class Client:
    """A connection of ``PATH`` and the frames delivered to it; ``refuse`` makes deliver say no."""

    name: str
    refuse: bool = False
    frames: list[bytes] = field(default_factory=list)
    conn: Connection = field(init=False)

    def __post_init__(self) -> None:
        self.conn = Connection._open(Link(), self._deliver, id=self.name, path=PATH, remote="127.0.0.1",
                                     headers={}, subprotocol=None)

    def _deliver(self, frame: bytes) -> bool:
        if self.refuse:
            return False
        self.frames.append(frame)
        return True

    @property
    def texts(self) -> list[str]:
        return [text_of(frame) for frame in self.frames]

    @property
    def events(self) -> list[Any]:
        return [json.loads(text) for text in self.texts]

    @property
    def ids(self) -> list[Any]:
        """Each event's id; a frame that is not a JSON object stands for itself."""
        return [json.loads(t)["id"] if t.startswith("{") else t for t in self.texts]
