"""WebSocket frames as bytes, for tests that talk to the gateway below any client library."""

from __future__ import annotations

import os
import struct

__all__ = ["client_frame", "server_frames"]


def client_frame(payload: bytes, opcode: int = 0x1, *, fin: bool = True, rsv: int = 0, mask: bool = True) -> bytes:
    """One client frame; masked, as RFC 6455 requires of a client, unless ``mask`` is False."""
    first = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, mask_bit | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The whole server frames (unmasked) in ``data``, as (opcode, payload)."""
    out = []
    while len(data) >= 2:
        n, start = data[1] & 0x7F, 2
        if n == 126:
            n, start = struct.unpack("!H", data[2:4])[0], 4
        elif n == 127:
            n, start = struct.unpack("!Q", data[2:10])[0], 10
        out.append((data[0] & 0x0F, data[start:start + n]))
        data = data[start + n:]
    return out
