"""Server frames as bytes (RFC 6455 section 5.2), free of I/O.

Messages are framed once, here, and the same bytes are queued to every receiver.
"""

from __future__ import annotations

import struct

__all__ = ["BINARY", "CLOSE", "PING", "PONG", "TEXT", "close_payload", "encode", "encode_frame", "split_frame"]

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA
RSV1 = 0x40  # permessage-deflate: this message is compressed (RFC 7692 section 6)
_HEAD_16 = struct.Struct("!BBH").pack
_HEAD_64 = struct.Struct("!BBQ").pack
_CLOSE_CODE = struct.Struct("!H").pack
_MAX_REASON = 123  # a control frame's payload is at most 125 bytes, 2 of them the code


def encode_frame(payload: bytes, opcode: int, flags: int = 0) -> bytes:
    """One unfragmented, unmasked server frame."""
    n = len(payload)
    if n < 126 and not flags:
        return _SMALL_HEADS[opcode][n] + payload
    first = 0x80 | flags | opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return _HEAD_16(first, 126, n) + payload
    return _HEAD_64(first, 127, n) + payload


def encode(message: str | bytes) -> bytes:
    """A text frame for ``str``, a binary frame for ``bytes``."""
    if isinstance(message, str):
        payload = message.encode()
        if len(payload) < 126:
            return _SMALL_TEXT[len(payload)] + payload
        return encode_frame(payload, TEXT)
    return encode_frame(bytes(message), BINARY)


def split_frame(wire: bytes) -> tuple[bytes, int]:
    """Payload and opcode of a frame made by ``encode_frame``."""
    n = wire[1] & 0x7F
    start = 2 if n < 126 else (4 if n == 126 else 10)
    return wire[start:], wire[0] & 0x0F


def close_payload(code: int, reason: str) -> bytes:
    """Code and reason of a close frame; the reason is cut to 123 bytes on a character boundary."""
    raw = reason.encode()
    if len(raw) > _MAX_REASON:
        raw = raw[:_MAX_REASON].decode(errors="ignore").encode()
    return _CLOSE_CODE(code) + raw


# Headers of short frames, precomputed: most messages are short and this is per message.
_SMALL_HEADS = {op: [bytes((0x80 | op, n)) for n in range(126)] for op in (TEXT, BINARY, CLOSE, PING, PONG)}
_SMALL_TEXT = _SMALL_HEADS[TEXT]
