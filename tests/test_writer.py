"""The writer and its flusher: what reaches the transport, in which write, and when.

On a real TCP socket: when the close frame counts as sent, and what an answer to the
peer's close frame writes. The peer is a plain socket that reads only when told to;
both ends get small kernel buffers, so that what the writer queues stays in its queue
instead of in the kernel.

On a transport stand-in: batching per loop pass, the high-water mark, control frames,
the close frame's order, half-close, abort, the slow-client policies and
permessage-deflate (checked against zlib and the ``websockets`` library).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame as WsFrame
from websockets.streams import StreamReader

from wsgate.gateway.frames import BINARY, CLOSE, PING, PONG, RSV1, TEXT, encode, encode_frame
from wsgate.gateway.sendqueue import MAX_PONGS, SendQueue
from wsgate.gateway.writer import TRANSPORT_HIGH_WATER, Deflate, Flusher, Writer
from wsgate.observe.stats import EndpointStats

MESSAGE = "x" * 1024
COUNT = 200  # 200 KiB: well over what the transport and both kernel buffers hold
KERNEL_SLACK = 64 * 1024  # more than the two small kernel buffers hold (about 16 KiB here)


@dataclass
class Peer:
    """The client's end: reads server frames when asked."""

    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)

    async def _fill(self, n: int) -> bool:
        loop = asyncio.get_running_loop()
        while len(self.buf) < n:
            chunk = await loop.sock_recv(self.sock, 65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    async def frame(self) -> tuple[int, bytes] | None:
        """The next frame as (opcode, payload); None at the end of the stream."""
        if not await self._fill(2):
            return None
        opcode, n, start = self.buf[0] & 0x0F, self.buf[1] & 0x7F, 2
        if n == 126:
            await self._fill(4)
            n, start = struct.unpack("!H", self.buf[2:4])[0], 4
        await self._fill(start + n)
        payload = bytes(self.buf[start:start + n])
        del self.buf[:start + n]
        return opcode, payload

    async def until_close(self) -> tuple[int, bytes]:
        """How many data frames come before the close frame, and its payload."""
        count = 0
        while (got := await self.frame()) is not None:
            opcode, payload = got
            if opcode == CLOSE:
                return count, payload
            assert (opcode, payload) == (TEXT, MESSAGE.encode())
            count += 1
        raise AssertionError(f"the stream ended after {count} data frames and no close frame")


@dataclass
class Setup:
    writer: Writer
    peer: Peer
    sent: list[None]  # one entry per on_close_sent call


@asynccontextmanager
async def connected() -> AsyncIterator[Setup]:
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        await loop.sock_connect(client, listener.getsockname())
        accepted, _ = listener.accept()
    accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, accepted)
    sent: list[None] = []

    def overflow() -> None:
        raise AssertionError("the queue overflowed")

    writer = Writer(transport, Flusher(loop), SendQueue(1 << 20, drop=False), EndpointStats(), overflow,
                    lambda: sent.append(None))
    try:
        yield Setup(writer, Peer(client), sent)
    finally:
        if not transport.is_closing():  # Python 3.11 fails an abort after a close that has completed
            transport.abort()
        client.close()


def _queue(writer: Writer) -> None:
    frame = encode(MESSAGE)
    for _ in range(COUNT):
        assert writer.send(frame)


async def test_close_frame_counts_as_sent_when_it_reaches_the_transport_after_the_queued_data() -> None:
    async with connected() as s:
        _queue(s.writer)
        s.writer.close_frame(4000, "done")
        await asyncio.sleep(0.1)  # flush passes run; the peer reads nothing
        assert s.writer.queue.pending > 0
        assert s.sent == []  # queued, not sent
        count, payload = await s.peer.until_close()
        assert (count, payload) == (COUNT, struct.pack("!H", 4000) + b"done")
        assert len(s.sent) == 1


async def test_answer_while_the_close_frame_waits_drops_the_queue_and_follows_the_transport() -> None:
    async with connected() as s:
        _queue(s.writer)
        s.writer.close_frame(4000, "done")
        await asyncio.sleep(0.1)
        assert s.writer.queue.pending > 0
        assert s.sent == []
        s.writer.answer_close(4000, "done", drop_queued=True)
        assert len(s.sent) == 1
        assert s.writer.queue.pending == 0
        s.writer.close()
        count, payload = await s.peer.until_close()
        assert payload == struct.pack("!H", 4000) + b"done"
        # what the transport held, plus the small kernel buffers; the rest of the queue was dropped
        assert 0 < count * (len(MESSAGE) + 4) <= TRANSPORT_HIGH_WATER + KERNEL_SLACK, count
        assert await s.peer.frame() is None  # only one close frame, then the end of TCP
        assert len(s.sent) == 1


async def test_answer_to_the_first_close_writes_the_queued_data_first() -> None:
    async with connected() as s:
        _queue(s.writer)
        await asyncio.sleep(0.1)
        assert s.writer.queue.pending > 0
        s.writer.answer_close(1000, "")
        assert len(s.sent) == 1
        s.writer.close()
        assert await s.peer.until_close() == (COUNT, struct.pack("!H", 1000))
        assert await s.peer.frame() is None


# --- The writer and the flusher on a transport stand-in -------------------------------
#
# What the writer asks of its transport is a handful of asyncio.WriteTransport methods;
# a stand-in that records them shows exactly what was written in which call, and can
# claim any write-buffer size.


class Transport:
    """The asyncio.WriteTransport methods the writer calls, recorded.

    With ``hold``, what is written stays in the write buffer (a client that does not
    read) until ``drain``; ``buffered`` may also be set directly.
    """

    def __init__(self, *, hold: bool = False, eof: bool = True) -> None:
        self.writes: list[bytes] = []
        self.events: list[str] = []  # "write", "eof", "close", "abort", in order
        self.buffered = 0
        self.hold = hold
        self.eof = eof
        self.closing = False

    def write(self, data: bytes) -> None:
        # Recorded, not refused: an assertion here would fail inside a loop callback,
        # where the test would not see it.
        self.writes.append(bytes(data))
        self.events.append("write after close" if self.closing else "write")
        if self.hold:
            self.buffered += len(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def can_write_eof(self) -> bool:
        return self.eof

    def write_eof(self) -> None:
        self.events.append("eof")

    def close(self) -> None:
        self.closing = True
        self.events.append("close")

    def abort(self) -> None:
        self.closing = True
        self.buffered = 0
        self.events.append("abort")

    def drain(self) -> None:
        self.buffered = 0

    @property
    def wire(self) -> bytes:
        return b"".join(self.writes)


@dataclass
class Fake:
    writer: Writer
    transport: Transport
    stats: EndpointStats
    sent: list[None]  # one entry per on_close_sent call
    overflows: list[None]  # one entry per on_overflow call


def fake(transport: Transport | None = None, *, limit: int = 1 << 20, drop: bool = False,
         deflate: Deflate | None = None, flusher: Flusher | None = None) -> Fake:
    transport = transport or Transport()
    stats = EndpointStats()
    sent: list[None] = []
    overflows: list[None] = []
    writer = Writer(cast(asyncio.Transport, transport), flusher or Flusher(asyncio.get_running_loop()),
                    SendQueue(limit, drop=drop), stats, lambda: overflows.append(None), lambda: sent.append(None),
                    deflate)
    return Fake(writer, transport, stats, sent, overflows)


def first_bytes(wire: bytes) -> list[int]:
    """The first byte (FIN, RSV bits, opcode) of each frame in ``wire``."""
    out = []
    while wire:
        n, start = wire[1] & 0x7F, 2
        if n == 126:
            n, start = struct.unpack("!H", wire[2:4])[0], 4
        elif n == 127:
            n, start = struct.unpack("!Q", wire[2:10])[0], 10
        out.append(wire[0])
        wire = wire[start + n:]
    return out


def frames_of(wire: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked, uncompressed frame in ``wire``."""
    out = []
    while wire:
        opcode, n, start = wire[0] & 0x0F, wire[1] & 0x7F, 2
        if n == 126:
            n, start = struct.unpack("!H", wire[2:4])[0], 4
        elif n == 127:
            n, start = struct.unpack("!Q", wire[2:10])[0], 10
        out.append((opcode, wire[start:start + n]))
        wire = wire[start + n:]
    return out


async def one_pass() -> None:
    """Let the flusher's pass, scheduled with call_soon, run."""
    await asyncio.sleep(0)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(2):
        while not condition():
            await asyncio.sleep(0.002)


def close_frame(code: int, reason: str = "") -> bytes:
    return encode_frame(struct.pack("!H", code) + reason.encode(), CLOSE)


F1, F2, F3, F4 = (encode(f"frame {i}") for i in range(1, 5))


async def test_the_first_frame_of_a_pass_goes_out_at_once_and_the_rest_in_one_write_on_the_next() -> None:
    f = fake()
    assert f.writer.send(F1)
    assert f.transport.writes == [F1]  # at once: a peer waiting for an answer gets it now
    for frame in (F2, F3, F4):
        assert f.writer.send(frame)
    assert f.transport.writes == [F1]
    await one_pass()
    assert f.transport.writes == [F1, F2 + F3 + F4]
    assert (f.writer.frames, f.stats.messages_out, f.stats.bytes_out) == (4, 4, len(F1 + F2 + F3 + F4))
    await one_pass()
    assert len(f.transport.writes) == 2  # nothing more to write, no empty write
    assert f.writer.send(F1)  # a new pass: the first frame goes out at once again
    assert f.transport.writes[-1] == F1


async def test_writers_of_one_pass_share_its_first_frame_and_each_writes_once_on_the_next() -> None:
    flusher = Flusher(asyncio.get_running_loop())
    a, b = fake(flusher=flusher), fake(flusher=flusher)
    a.writer.send(F1)
    b.writer.send(F2)
    a.writer.send(F3)
    b.writer.send(F4)
    assert (a.transport.writes, b.transport.writes) == ([F1], [])
    await one_pass()
    assert (a.transport.writes, b.transport.writes) == ([F1, F3], [F2 + F4])


async def test_a_transport_over_the_high_water_mark_gets_nothing_until_it_drains() -> None:
    f = fake(Transport())
    f.transport.buffered = TRANSPORT_HIGH_WATER + 1
    for frame in (F1, F2, F3):
        assert f.writer.send(frame)
    await asyncio.sleep(0.03)  # the flusher's passes and a few of its retries
    assert f.transport.writes == []
    assert f.writer.queue.pending == len(F1 + F2 + F3)
    f.transport.drain()
    await until(lambda: f.writer.queue.pending == 0)
    assert f.transport.writes == [F1 + F2 + F3]


async def test_a_client_that_does_not_read_is_given_at_most_the_high_water_mark_then_everything_in_order() -> None:
    f = fake(Transport(hold=True))
    frame = encode(MESSAGE)
    for _ in range(COUNT):
        assert f.writer.send(frame)
    await asyncio.sleep(0.03)
    held = f.transport.buffered
    assert TRANSPORT_HIGH_WATER - len(frame) < held <= TRANSPORT_HIGH_WATER + len(frame), held
    assert f.writer.queue.pending == COUNT * len(frame) - held
    while f.writer.queue.pending:  # the client reads, a transport's worth at a time
        f.transport.drain()
        written = len(f.transport.writes)
        await until(lambda: len(f.transport.writes) > written)  # noqa: B023
        assert f.transport.buffered <= TRANSPORT_HIGH_WATER + len(frame)
    assert frames_of(f.transport.wire) == [(TEXT, MESSAGE.encode())] * COUNT


async def test_pings_and_pongs_go_before_queued_data_one_ping_and_at_most_max_pongs() -> None:
    f = fake()
    f.writer.send(F1)
    f.writer.send(F2)
    f.writer.ping(b"first")
    f.writer.ping(b"second")  # replaces the ping not yet written
    for i in range(MAX_PONGS + 4):
        f.writer.pong(b"p%d" % i)
    await one_pass()
    assert f.transport.writes[0] == F1
    pongs = [(PONG, b"p%d" % i) for i in range(MAX_PONGS - 1)] + [(PONG, b"p%d" % (MAX_PONGS + 3))]
    assert frames_of(f.transport.writes[1]) == [*pongs, (PING, b"second"), (TEXT, b"frame 2")]
    assert f.stats.messages_out == 2  # control frames are not messages


async def test_a_ping_on_an_idle_connection_is_written_on_the_next_pass() -> None:
    f = fake()
    f.writer.ping()
    assert f.transport.writes == []
    await one_pass()
    assert f.transport.writes == [encode_frame(b"", PING)]


async def test_the_close_frame_follows_the_queued_data_and_nothing_follows_it() -> None:
    f = fake()
    f.writer.send(F1)
    f.writer.send(F2)
    f.writer.send(F3)
    f.writer.close_frame(1000, "bye")
    assert f.transport.wire == F1 + F2 + F3 + close_frame(1000, "bye")
    assert len(f.sent) == 1
    assert not f.writer.send(F4)  # refused: the connection is closing
    f.writer.ping()
    await one_pass()
    assert f.transport.wire == F1 + F2 + F3 + close_frame(1000, "bye")
    assert (f.overflows, f.writer.frames, len(f.sent)) == ([], 3, 1)


async def test_a_close_frame_behind_a_full_transport_waits_for_the_data_and_counts_as_sent_when_written() -> None:
    f = fake(Transport())
    f.transport.buffered = TRANSPORT_HIGH_WATER + 1
    f.writer.send(F1)
    f.writer.close_frame(4000, "done")
    await asyncio.sleep(0.03)
    assert (f.transport.writes, f.sent) == ([], [])
    f.transport.drain()
    await until(lambda: bool(f.sent))
    assert f.transport.wire == F1 + close_frame(4000, "done")
    assert len(f.sent) == 1


async def test_no_close_frame_on_a_transport_that_is_closing() -> None:
    f = fake()
    f.transport.closing = True
    f.writer.close_frame(1000, "")
    await one_pass()
    assert (f.transport.writes, f.sent) == ([], [])


async def test_the_answer_to_a_close_writes_the_queued_data_and_the_close_frame_in_one_write() -> None:
    f = fake(Transport())
    f.transport.buffered = TRANSPORT_HIGH_WATER + 1  # the answer does not wait for the transport
    f.writer.send(F1)
    f.writer.send(F2)
    f.writer.answer_close(1000, "")
    assert f.transport.writes == [F1 + F2 + close_frame(1000)]
    assert len(f.sent) == 1
    assert f.writer.queue.pending == 0
    assert not f.writer.send(F3)


async def test_the_answer_with_drop_queued_replaces_the_waiting_close_frame_and_drops_the_queue() -> None:
    f = fake(Transport())
    f.transport.buffered = TRANSPORT_HIGH_WATER + 1
    f.writer.send(F1)
    f.writer.send(F2)
    f.writer.close_frame(4000, "mine")
    f.writer.answer_close(4000, "mine", drop_queued=True)
    assert f.transport.writes == [close_frame(4000, "mine")]
    assert len(f.sent) == 1
    f.transport.drain()
    await asyncio.sleep(0.03)
    assert f.transport.writes == [close_frame(4000, "mine")]  # one close frame, ever
    assert len(f.sent) == 1


async def test_no_answer_on_a_transport_that_is_closing() -> None:
    f = fake()
    f.transport.closing = True
    f.writer.answer_close(1000, "")
    assert (f.transport.writes, f.sent) == ([], [])


async def test_abort_drops_the_queue_and_the_transport() -> None:
    f = fake(Transport())
    f.transport.buffered = TRANSPORT_HIGH_WATER + 1
    f.writer.send(F1)
    f.writer.abort()
    assert f.transport.events == ["abort"]
    assert f.writer.queue.pending == 0
    assert not f.writer.send(F2)
    await asyncio.sleep(0.03)
    assert f.transport.writes == []


async def test_abort_after_a_close_leaves_a_drained_transport_alone_and_aborts_one_still_draining() -> None:
    drained = fake()
    drained.writer.close()
    assert drained.writer.closed
    assert not drained.writer.draining
    drained.writer.abort()
    assert drained.transport.events == ["close"]  # asyncio fails an abort after a completed close

    draining = fake(Transport(hold=True))
    draining.writer.send(F1)
    draining.writer.close()
    assert draining.writer.draining
    draining.writer.abort()
    assert draining.transport.events == ["write", "close", "abort"]


async def test_finish_writing_half_closes_at_once_without_a_waiting_close_frame() -> None:
    f = fake()
    f.writer.send(F1)
    f.writer.finish_writing()
    assert f.transport.events == ["write", "eof"]


async def test_finish_writing_half_closes_after_the_close_frame_that_waits_behind_data() -> None:
    f = fake(Transport())
    f.transport.buffered = TRANSPORT_HIGH_WATER + 1
    f.writer.send(F1)
    f.writer.close_frame(1002, "bad frame")
    f.writer.finish_writing()
    await asyncio.sleep(0.03)
    assert f.transport.events == []  # no FIN before the close frame
    f.transport.drain()
    await until(lambda: "eof" in f.transport.events)
    assert f.transport.events == ["write", "write", "eof"]
    assert f.transport.wire == F1 + close_frame(1002, "bad frame")


async def test_finish_writing_does_nothing_on_a_transport_without_eof_or_closing() -> None:
    no_eof = fake(Transport(eof=False))
    no_eof.writer.finish_writing()
    closing = fake()
    closing.transport.closing = True
    closing.writer.finish_writing()
    assert no_eof.transport.events == closing.transport.events == []


async def test_a_full_queue_under_the_close_policy_overflows_once_and_refuses_every_later_frame() -> None:
    frame = encode("x" * 100)
    f = fake(limit=3 * len(frame))
    assert f.writer.send(frame)  # written at once, not queued
    for _ in range(3):
        assert f.writer.send(frame)
    assert f.overflows == []
    assert not f.writer.send(frame)
    assert len(f.overflows) == 1
    assert not f.writer.send(encode("tiny"))
    assert len(f.overflows) == 1  # the policy acts once
    await one_pass()
    assert f.transport.wire == frame * 4
    assert (f.writer.frames, f.stats.messages_out) == (4, 4)


async def test_a_full_queue_under_the_drop_policy_drops_the_oldest_and_says_how_many_first() -> None:
    frames = [encode(f"{i:03d}" + "x" * 97) for i in range(7)]
    f = fake(limit=3 * len(frames[0]), drop=True)
    for frame in frames:
        assert f.writer.send(frame)  # never refused
    await one_pass()
    assert f.overflows == []
    notice = encode(json.dumps({"type": "dropped", "count": 3}))
    assert f.transport.writes == [frames[0], notice + frames[4] + frames[5] + frames[6]]
    for frame in frames[:2]:  # the count starts again
        f.writer.send(frame)
    await one_pass()
    assert f.transport.writes[-1] == frames[1]


async def test_a_single_frame_larger_than_the_queue_bound_still_goes_out() -> None:
    f = fake(limit=10)
    f.writer.send(F1)
    big = encode("y" * 1000)
    assert f.writer.send(big)
    await one_pass()
    assert f.transport.wire == F1 + big


async def test_after_the_transport_closes_the_queue_is_forgotten() -> None:
    f = fake()
    f.writer.send(F1)
    f.writer.send(F2)
    f.transport.closing = True
    await one_pass()
    assert f.transport.events == ["write"]
    assert f.writer.queue.pending == 0


# --- permessage-deflate ------------------------------------------------------------------

LONG = '{"type":"message","body":"' + "la " * 300 + '"}'
TEXTS = ["", "hello", LONG, LONG]


def _inflate(payload: bytes, inflater: Any) -> bytes:
    return bytes(inflater.decompress(payload + b"\x00\x00\xff\xff"))


def _deflated(deflate: Deflate, message: str | bytes) -> tuple[int, int, bytes]:
    """(first byte flags, opcode, payload) of ``message`` as ``deflate`` frames it."""
    wire = deflate.frame(encode(message))
    [(opcode, payload)] = frames_of(wire)
    return wire[0] & 0xF0, opcode, payload


def _fresh_inflate_fails(payload: bytes, expected: bytes) -> bool:
    try:
        return _inflate(payload, zlib.decompressobj(-15)) != expected
    except zlib.error:
        return True


async def test_deflate_with_context_takeover_round_trips_through_one_inflater_and_uses_the_context() -> None:
    deflate, inflater = Deflate(15, takeover=True), zlib.decompressobj(-15)
    sizes = []
    for text in TEXTS:
        flags, opcode, payload = _deflated(deflate, text)
        assert (flags, opcode) == (0x80 | RSV1, TEXT)
        assert _inflate(payload, inflater) == text.encode()
        sizes.append(len(payload))
    assert sizes[3] < sizes[2]  # the repeat refers back to the message before
    assert _fresh_inflate_fails(_deflated(deflate, TEXTS[2])[2], TEXTS[2].encode())


async def test_deflate_without_context_takeover_makes_every_message_stand_alone() -> None:
    deflate = Deflate(15, takeover=False)
    payloads = []
    for text in TEXTS:
        flags, opcode, payload = _deflated(deflate, text)
        assert (flags, opcode) == (0x80 | RSV1, TEXT)
        assert _inflate(payload, zlib.decompressobj(-15)) == text.encode()
        payloads.append(payload)
    assert payloads[3] == payloads[2]  # nothing of the message before is used


async def test_deflate_keeps_the_opcode_and_frames_long_payloads() -> None:
    deflate = Deflate(15, takeover=True)
    data = random.Random(7).randbytes(70_000)  # incompressible: a 64-bit length
    wire = deflate.frame(encode(data))
    assert wire[1] == 127
    [(opcode, payload)] = frames_of(wire)
    assert opcode == BINARY
    assert _inflate(payload, zlib.decompressobj(-15)) == data


async def test_deflate_leaves_control_frames_alone() -> None:
    deflate = Deflate(15, takeover=True)
    for frame in (encode_frame(b"ping", PING), encode_frame(b"pong", PONG), close_frame(1000, "bye")):
        assert deflate.frame(frame) == frame


def _websockets_reads(wire: bytes, *, takeover: bool, wbits: int) -> list[tuple[int, bytes]]:
    """The frames a ``websockets`` client that negotiated these parameters reads from ``wire``."""
    extension = PerMessageDeflate(remote_no_context_takeover=not takeover, local_no_context_takeover=False,
                                  remote_max_window_bits=wbits, local_max_window_bits=15)
    reader = StreamReader()
    reader.feed_data(wire)
    reader.feed_eof()
    out = []
    while reader.buffer:
        parser = WsFrame.parse(reader.read_exact, mask=False, extensions=[extension])
        try:
            next(parser)
        except StopIteration as done:
            frame = done.value
        else:
            raise AssertionError("a frame was cut short")
        out.append((int(frame.opcode), bytes(frame.data)))
    return out


@pytest.mark.parametrize(("takeover", "wbits"), [(True, 15), (False, 15), (True, 10), (False, 9)])
async def test_deflate_is_what_the_websockets_library_inflates(takeover: bool, wbits: int) -> None:
    deflate = Deflate(wbits, takeover=takeover)
    messages: list[str | bytes] = [*TEXTS, bytes(range(256)) * 40, "é" * 5000, *TEXTS]
    wire = b"".join(deflate.frame(encode(m)) for m in messages) + deflate.frame(close_frame(1000))
    expected = [(BINARY if isinstance(m, bytes) else TEXT, m if isinstance(m, bytes) else m.encode())
                for m in messages]
    assert _websockets_reads(wire, takeover=takeover, wbits=wbits) == [*expected, (CLOSE, struct.pack("!H", 1000))]


async def test_a_compressing_writer_compresses_each_data_frame_on_the_next_pass() -> None:
    f = fake(deflate=Deflate(15, takeover=True))
    for text in TEXTS:
        assert f.writer.send(encode(text))
    assert f.transport.writes == []  # never written at once: frames are compressed when written
    await one_pass()
    f.writer.pong(b"p")
    f.writer.close_frame(1000, "")
    assert len(f.transport.writes) == 3
    compressed = 0x80 | RSV1 | TEXT
    assert first_bytes(f.transport.wire) == [compressed] * len(TEXTS) + [0x80 | PONG, 0x80 | CLOSE]
    read = _websockets_reads(f.transport.wire, takeover=True, wbits=15)
    assert read == [*((TEXT, t.encode()) for t in TEXTS), (PONG, b"p"), (CLOSE, struct.pack("!H", 1000))]
    assert f.stats.bytes_out == sum(len(encode(t)) for t in TEXTS)  # counted before compression
