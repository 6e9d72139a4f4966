"""The connection core alone: client bytes, ticks, sends and close requests in; messages,
the end, and what is written to the wire out. No socket and no event loop: the wire
records every call, the timers are a list, the clock is a number.

Every close code a live test checks has its path here: 1000 and 1005 answered, 1001
idle, 1002 bad frames and close codes, 1003 the wrong message type, 1006 a lost peer or
a heartbeat timeout, 1007 invalid UTF-8, 1008 rate and slow consumers, 1009 too big,
3000 expired credentials, and a close the server began, answered or timed out.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rawframes import client_frame, server_frames

from wsgate.closecode import CloseCode
from wsgate.config.models import Policy
from wsgate.gateway.aiohttp_seam import frame_reader
from wsgate.gateway.closing import Phase
from wsgate.gateway.core import BACKLOG_BYTES, END, Core
from wsgate.gateway.frames import CLOSE, PING, PONG, TEXT
from wsgate.gateway.timers import Timed
from wsgate.gateway.writer import Flusher
from wsgate.observe.stats import EndpointStats

BINARY = 0x2


def text(s: str) -> bytes:
    return client_frame(s.encode())


def close(code: int | None = None, reason: str = "") -> bytes:
    return client_frame(b"" if code is None else struct.pack("!H", code) + reason.encode(), CLOSE)


class Wire:
    """Records what the core does to the connection."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.written = b""
        self.closing = False
        self.buffered = 0  # what the "transport" holds unwritten

    def write(self, data: bytes) -> None:
        assert not self.closing, "written after close"
        self.written += data
        self.calls.append("write")

    def write_eof(self) -> None:
        self.calls.append("eof")

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.closing = True
        self.calls.append("close")

    def abort(self) -> None:
        self.closing = True
        self.calls.append("abort")

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def frames(self) -> list[tuple[int, bytes]]:
        return server_frames(self.written)

    def close_frame(self) -> tuple[int, str]:
        (payload,) = [p for op, p in self.frames() if op == CLOSE]
        return struct.unpack("!H", payload[:2])[0], payload[2:].decode()


class Loop:
    """The flusher's loop: callbacks run when the test says the loop pass is over."""

    def __init__(self) -> None:
        self.soon: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.later: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        self.soon.append((callback, args))

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> None:
        self.later.append((callback, args))  # a retry: runs when the test says time has passed

    def run(self, *, retries: bool = False) -> None:
        if retries:
            self.soon += self.later
            self.later = []
        while self.soon:
            callback, args = self.soon.pop(0)
            callback(*args)


class Timers:
    """The timer wheel, exact: ``advance`` moves the clock and fires what is due."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.due: dict[int, tuple[float, Timed]] = {}
        self._slots = 0

    def schedule(self, when: float, target: Timed) -> int:
        self._slots += 1
        self.due[self._slots] = (when, target)
        return self._slots

    def cancel(self, slot: int, target: Timed) -> None:
        del self.due[slot]

    def next(self) -> float | None:
        return min((when for when, _ in self.due.values()), default=None)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while (when := self.next()) is not None and when <= end:
            self.now = max(self.now, when)
            slot = next(s for s, (w, _) in self.due.items() if w == when)
            _, target = self.due.pop(slot)
            target.on_timer()
        self.now = end


class Conn:
    """A core with everything it is driven by."""

    def __init__(self, *, early: bytes = b"", compress: bool = False, size_limit: int = 0,
                 accepts: Any = "any", expires: float | None = None, **policy: Any) -> None:
        policy.setdefault("heartbeat", {"interval": 0})
        self.policy = Policy(**policy)
        self.wire = Wire()
        self.loop = Loop()
        self.timers = Timers()
        self.stats = EndpointStats()
        sink, parser = frame_reader(self.policy.max_message_size + 1, compress)
        if early:
            parser.feed_data(early)
        self.core = Core(self.policy, self.wire, (sink, parser), flusher=Flusher(cast(Any, self.loop)),
                         timers=self.timers, clock=lambda: self.timers.now, stats=self.stats, accepts=accepts,
                         size_limit=size_limit, expires=expires)
        self.started = self.core.start()

    def feed(self, data: bytes) -> list[object]:
        """Bytes from the client; everything ``next`` then gives, up to None; the loop pass ends."""
        self.core.receive(data)
        return self.drain()

    def drain(self) -> list[object]:
        got = []
        while (item := self.core.next()) is not None:
            got.append(item)
            if item is END:
                self.core.finish()
                break
        self.loop.run()
        return got

    def send(self, message: str) -> bool:
        from wsgate.gateway.frames import encode
        return self.core.writer.send(encode(message))

    @property
    def code(self) -> int | None:
        return self.core.handshake.code


# --- messages ---

def test_messages_come_out_in_order_and_an_idle_core_keeps_no_backlog() -> None:
    c = Conn()
    assert c.feed(text("a") + client_frame(b"\x00\x01", BINARY) + text("é")) == ["a", b"\x00\x01", "é"]
    assert c.core._backlog is None
    assert c.stats.messages_in == 3
    assert c.wire.calls == []


def test_a_message_split_across_many_reads_comes_out_once_whole() -> None:
    c = Conn()
    wire = text("hello there") + text("two")
    got = []
    for i in range(len(wire)):
        got += c.feed(wire[i:i + 1])
    assert got == ["hello there", "two"]


def test_fragments_are_one_message() -> None:
    c = Conn()
    assert c.feed(client_frame(b"ab", fin=False) + client_frame(b"cd", 0, fin=False) + client_frame(b"e", 0)) == [
        "abcde"]


def test_messages_sent_with_the_handshake_come_first() -> None:
    c = Conn(early=text("early"))
    assert c.started
    assert c.feed(text("late")) == ["early", "late"]


def test_a_ping_is_answered_with_its_payload_and_never_reaches_the_handler() -> None:
    c = Conn()
    assert c.feed(client_frame(b"p1", PING) + text("m")) == ["m"]
    assert c.wire.frames() == [(PONG, b"p1")]


def test_sends_go_out_the_first_at_once_and_the_rest_in_one_write_on_the_next_pass() -> None:
    c = Conn()
    assert [c.send("one"), c.send("two"), c.send("three")] == [True, True, True]
    assert c.wire.calls == ["write"]
    c.loop.run()
    assert c.wire.calls == ["write", "write"]
    assert c.wire.frames() == [(TEXT, b"one"), (TEXT, b"two"), (TEXT, b"three")]


# --- the client closes ---

def test_1000_is_answered_with_1000_then_tcp_closes_and_the_session_ends() -> None:
    c = Conn()
    assert c.feed(text("last") + close(1000, "bye")) == ["last", END]
    assert c.wire.close_frame() == (1000, "bye")
    assert c.wire.calls[-1] == "close"
    assert (c.code, c.core.handshake.reason) == (1000, "bye")


def test_a_close_without_a_code_is_answered_with_1000_and_reported_as_1005() -> None:
    c = Conn()
    assert c.feed(close()) == [END]
    assert c.wire.close_frame() == (1000, "")
    assert c.code == CloseCode.NO_STATUS


def test_an_invalid_close_code_is_answered_with_1002() -> None:
    for code in (999, 1004, 1005, 1006, 1015, 2999, 5000):
        c = Conn()
        c.feed(close(code))
        assert c.wire.close_frame()[0] == 1002, code
        assert c.code == 1002


def test_a_4xxx_close_code_is_echoed() -> None:
    c = Conn()
    c.feed(close(4321, "app"))
    assert c.wire.close_frame() == (4321, "app")
    assert c.code == 4321


def test_the_end_of_the_stream_ends_the_session_with_1006_after_what_came_before() -> None:
    c = Conn()
    c.core.receive(text("a"))
    c.core.receive_eof()
    assert c.drain() == ["a", END]
    assert c.code == CloseCode.ABNORMAL
    assert c.wire.calls == ["abort"]  # the session ended: TCP is dropped


# --- the server closes ---

def test_a_server_close_waits_behind_queued_data_then_counts_as_sent_and_ends_on_the_answer() -> None:
    c = Conn()
    c.send("first")  # written at once
    c.wire.buffered = 10**6  # then the client stops reading for a while
    c.send("queued")
    c.core.close(4000, "go away")
    c.loop.run()
    assert c.core.handshake.phase is Phase.CLOSE_QUEUED
    assert not c.send("refused")
    c.wire.buffered = 0
    c.loop.run(retries=True)
    assert c.core.handshake.phase is Phase.CLOSING
    assert [p for _, p in c.wire.frames()] == [b"first", b"queued", struct.pack("!H", 4000) + b"go away"]
    assert c.feed(text("discarded") + close(4000)) == [END]
    assert c.code == 4000
    assert c.wire.calls[-1] == "close"


def test_an_answer_while_our_close_still_waits_drops_the_queue_and_reports_our_code() -> None:
    c = Conn(send_queue=1024)
    c.wire.buffered = 10**6  # the client reads nothing: the queue cannot drain
    c.send("a")
    c.core.close(4001, "mine")
    c.loop.run()
    assert c.core.handshake.phase is Phase.CLOSE_QUEUED
    assert c.feed(close(1000)) == [END]
    assert c.wire.frames() == [(CLOSE, struct.pack("!H", 4001) + b"mine")]
    assert c.code == 4001


def test_an_unanswered_close_drops_tcp_at_close_timeout_not_before() -> None:
    c = Conn(close_timeout=2)
    c.core.close(1001, "bye")
    c.loop.run()
    c.timers.advance(1.9)
    assert "abort" not in c.wire.calls
    c.timers.advance(0.2)
    assert c.wire.calls[-1] == "abort"
    c.core.receive_eof()  # connection_lost
    assert c.drain() == [END]
    assert c.code == 1001


@pytest.mark.parametrize(("code", "reason"), [
    (CloseCode.INTERNAL_ERROR, "internal error"),  # a handler raised
    (CloseCode.SERVICE_RESTART, "restarting"),  # SIGUSR1
    (CloseCode.TRY_AGAIN_LATER, "try again later"),
    (CloseCode.FORBIDDEN, "forbidden"),  # a reload no longer allows the client
    (4009, "x" * 200),  # a handler's own; the reason is cut to fit a control frame
])
def test_the_code_a_close_began_with_is_what_the_client_reads_and_what_is_reported(code: int, reason: str) -> None:
    c = Conn()
    c.core.close(code, reason)
    c.loop.run()
    assert c.wire.close_frame() == (code, reason[:123])
    assert c.feed(close(code)) == [END]
    assert (c.code, c.core.handshake.reason) == (code, reason)


def test_a_second_close_changes_nothing() -> None:
    c = Conn()
    c.core.close(4000, "one")
    c.core.close(4001, "two")
    c.loop.run()
    assert c.wire.close_frame() == (4000, "one")


def test_abort_drops_tcp_and_reports_its_code() -> None:
    c = Conn()
    c.core.abort(1001, "shutdown timeout")
    c.core.receive_eof()
    assert c.drain() == [END]
    assert c.wire.calls == ["abort"]
    assert (c.code, c.core.handshake.reason) == (1001, "shutdown timeout")


def test_a_close_before_the_start_keeps_its_deadline() -> None:
    c = Conn(close_timeout=1)
    c.core.close(1008, "forbidden")
    c.core.start()
    assert len(c.timers.due) == 1
    c.timers.advance(1.1)
    assert "abort" in c.wire.calls


def test_after_the_handshake_a_client_that_does_not_read_is_dropped_at_close_timeout() -> None:
    c = Conn(close_timeout=3)
    c.feed(close(1000))
    c.wire.buffered = 500  # the close is done, but the transport still holds bytes
    c.core.finish()
    c.timers.advance(3.1)
    assert c.wire.calls[-1] == "abort"


# --- limits ---

def test_a_message_over_max_message_size_gets_1009_fin_and_the_rest_is_discarded() -> None:
    c = Conn(max_message_size=10, close_timeout=1)
    assert c.feed(text("0123456789") + text("0123456789x") + text("after")) == ["0123456789"]
    assert c.wire.close_frame() == (1009, "message too big: the limit is 10 bytes")
    assert c.wire.calls[-1] == "eof"  # half-closed: the client may still answer
    assert c.feed(text("more") + close(1000)) == []  # read and discarded
    c.timers.advance(1.1)
    assert c.wire.calls[-1] == "abort"
    c.core.receive_eof()
    assert c.drain() == [END]
    assert c.code == 1009


def test_an_inflated_message_over_the_limit_gets_1009() -> None:
    c = Conn(max_message_size=100, compress=True, size_limit=100)
    deflater = zlib.compressobj(wbits=-15)
    payload = deflater.compress(b"x" * 101) + deflater.flush(zlib.Z_SYNC_FLUSH)
    assert c.feed(client_frame(payload[:-4], TEXT, rsv=0x40)) == []
    assert c.wire.close_frame()[0] == 1009


def test_invalid_utf8_gets_1007() -> None:
    c = Conn()
    assert c.feed(client_frame(b"\xff\xfe")) == []
    assert c.wire.close_frame() == (1007, "invalid UTF-8 in a text message")
    assert c.code == 1007


def test_a_malformed_frame_gets_1002() -> None:
    for bad in (client_frame(b"x", 0x3),  # a reserved opcode
                client_frame(b"x", rsv=0x20),  # a reserved bit
                client_frame(b"x" * 126, PING),  # a control frame over 125 bytes
                client_frame(b"x", PING, fin=False),  # a fragmented control frame
                client_frame(b"x", 0)):  # a continuation with nothing to continue
        c = Conn()
        assert c.feed(bad + text("after")) == []
        assert c.wire.close_frame()[0] == 1002, bad
        assert c.code == 1002


@pytest.mark.parametrize("cut", [1, 2, 3, 7, 50])
def test_an_unmasked_frame_gets_1002_after_the_frames_before_it_however_the_bytes_are_cut(cut: int) -> None:
    """RFC 6455 section 5.1; aiohttp's reader would accept it."""
    c = Conn()
    wire = text("a" * 200) + text("b") + bytes((0x81, 2)) + b"hi" + text("after")
    got: list[object] = []
    for at in range(0, len(wire), cut):
        got += c.feed(wire[at:at + cut])
    assert got == ["a" * 200, "b"]
    assert c.wire.close_frame() == (1002, "client frames must be masked")
    assert c.wire.calls[-1] == "eof"


def test_the_wrong_message_type_gets_1003_and_later_data_is_discarded() -> None:
    c = Conn(accepts="text")
    assert c.feed(client_frame(b"\x00", BINARY) + text("after")) == []
    c.loop.run()
    assert c.wire.close_frame() == (1003, "this endpoint accepts only text messages")
    assert c.stats.messages_in == 1


def test_over_the_rate_gets_1008_and_pings_draw_on_the_same_budget() -> None:
    c = Conn(rate_limit={"messages": 2, "per": 1})
    assert c.feed(client_frame(b"", PING) + text("a") + text("b")) == ["a"]
    c.loop.run()
    assert c.wire.close_frame() == (1008, "rate limit exceeded")
    assert c.stats.limit_rejections["rate"] == 1


def test_the_rate_refills_with_time() -> None:
    c = Conn(rate_limit={"messages": 1, "per": 1})
    assert c.feed(text("a")) == ["a"]
    c.timers.advance(1.0)
    assert c.feed(text("b")) == ["b"]


def test_a_client_that_does_not_read_overflows_the_queue_and_gets_1008_slow_consumer() -> None:
    c = Conn(send_queue=100)
    c.wire.buffered = 10**6
    sent = [c.send("x" * 40) for _ in range(4)]
    assert sent == [True, True, False, False]
    assert c.core.handshake.code == 1008
    assert c.core.handshake.reason == "slow consumer"
    assert c.stats.slow_client_closes == 1


def test_under_the_drop_policy_the_oldest_go_and_the_client_is_told_how_many() -> None:
    c = Conn(send_queue=100, slow_client="drop")
    c.wire.buffered = 10**6
    assert all(c.send(f"{i}" * 40) for i in range(4))
    c.wire.buffered = 0
    c.loop.run()
    assert [p for _, p in c.wire.frames()] == [b'{"type": "dropped", "count": 2}', b"2" * 40, b"3" * 40]


def test_a_flood_stops_the_reading_until_the_handler_catches_up() -> None:
    c = Conn()
    chunk = text("x" * 16_000)
    for _ in range(BACKLOG_BYTES // 16_000 + 1):
        c.core.receive(chunk)
    assert c.wire.calls == ["pause"]
    while c.core.next() is not None:
        pass
    assert c.wire.calls == ["pause", "resume"]


# --- time ---

def test_a_heartbeat_pings_at_its_interval_and_a_pong_keeps_the_client() -> None:
    c = Conn(heartbeat={"interval": 10, "timeout": 5})
    c.timers.advance(10)
    c.loop.run()
    assert c.wire.frames() == [(PING, b"")]
    c.feed(client_frame(b"", PONG))
    c.timers.advance(9)
    assert "abort" not in c.wire.calls
    assert c.core.handshake.open


def test_a_pong_with_nothing_waiting_is_taken_at_once_and_one_behind_a_message_in_its_turn() -> None:
    c = Conn(heartbeat={"interval": 10, "timeout": 5})
    c.timers.advance(3)
    assert not c.core.receive(client_frame(b"", PONG))  # nothing for the pump to do
    assert c.core._backlog is None
    assert c.core.keepalive.last_seen == 1003
    c.timers.advance(1)
    assert c.core.receive(text("m") + client_frame(b"", PONG))
    assert c.core.keepalive.last_seen == 1003  # not before the message is handled
    assert c.drain() == ["m"]
    assert c.core.keepalive.last_seen == 1004


def test_no_pong_within_the_timeout_drops_the_client_as_1006() -> None:
    c = Conn(heartbeat={"interval": 10, "timeout": 5})
    c.timers.advance(14.9)
    assert "abort" not in c.wire.calls
    c.timers.advance(0.2)
    assert c.wire.calls[-1] == "abort"
    assert (c.code, c.core.handshake.reason) == (1006, "heartbeat timeout")
    assert c.stats.heartbeat_timeouts == 1


def test_no_message_within_the_idle_timeout_closes_with_1001_and_a_message_defers_it() -> None:
    c = Conn(idle_timeout=30)
    c.timers.advance(20)
    c.feed(text("still here"))
    c.timers.advance(20)
    assert c.core.handshake.open
    c.timers.advance(11)
    c.loop.run()
    assert c.wire.close_frame() == (1001, "idle timeout")


def test_credentials_that_expire_close_with_3000() -> None:
    c = Conn(expires=1000.0 + 60, heartbeat={"interval": 100})
    c.timers.advance(59)
    assert c.core.handshake.open
    c.timers.advance(2)
    c.loop.run()
    assert c.wire.close_frame() == (3000, "token expired")


def test_without_keepalive_or_expiry_no_timer_is_armed() -> None:
    c = Conn()
    assert c.timers.due == {}


# --- the frame parser, under any chunking and any bytes ---

messages = st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=300), st.binary(min_size=65536,
                                                                                    max_size=65600)), max_size=8)


@settings(max_examples=150, deadline=None)
@given(messages, st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=20))
def test_any_chunking_of_a_frame_stream_gives_the_same_messages(sent: list[str | bytes], cuts: list[int]) -> None:
    data = b"".join(text(m) if isinstance(m, str) else client_frame(m, BINARY) for m in sent)
    c = Conn()
    got: list[object] = []
    at, i = 0, 0
    while at < len(data):
        n = cuts[i % len(cuts)]
        got += c.feed(data[at:at + n])
        at, i = at + n, i + 1
    assert got == sent


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_messages_or_a_close_with_a_code_the_rfc_allows(data: bytes) -> None:
    c = Conn(max_message_size=100)
    got = c.feed(data)
    assert all(isinstance(m, str | bytes) or m is END for m in got)
    if c.code is not None:
        assert c.code in (1000, 1002, 1007, 1009) or 1000 <= c.code <= 4999
        assert "close" in c.wire.calls or c.wire.frames()[-1][0] == CLOSE
