"""The pure parts of the gateway, without sockets: the close handshake, the send
queue and its slow-client policy, and server frames."""

from __future__ import annotations

import json
import struct

import pytest

from wsgate import CloseCode
from wsgate.gateway.closing import CloseHandshake, Phase, Reply, valid_close_code
from wsgate.gateway.frames import BINARY, CLOSE, PING, PONG, TEXT, close_payload, encode, encode_frame, split_frame
from wsgate.gateway.sendqueue import MAX_PONGS, Push, SendQueue

# --- close codes a peer may send (RFC 6455 7.4.1, 7.4.2; the Autobahn 7.9.x / 7.13.x cases) ---

INVALID = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
VALID = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999]


@pytest.mark.parametrize("code", VALID)
def test_valid_close_codes(code: int) -> None:
    assert valid_close_code(code)


@pytest.mark.parametrize("code", INVALID)
def test_invalid_close_codes(code: int) -> None:
    assert not valid_close_code(code)


# --- the close handshake ---


def test_client_close_is_echoed_and_reported() -> None:
    hs = CloseHandshake()
    assert hs.received(4001, "bye") == Reply(4001, "bye", drop_queued=False)
    assert (hs.phase, hs.code, hs.reason) == (Phase.CLOSED, 4001, "bye")


def test_client_close_without_code_is_answered_1000_and_reported_1005() -> None:
    hs = CloseHandshake()
    assert hs.received(None, "") == Reply(CloseCode.NORMAL, "")
    assert hs.code == CloseCode.NO_STATUS


@pytest.mark.parametrize("code", INVALID[1:])
def test_invalid_client_close_code_is_a_protocol_error(code: int) -> None:
    hs = CloseHandshake()
    answer = hs.received(code, "")
    assert answer is not None
    assert answer[0] == CloseCode.PROTOCOL_ERROR
    assert hs.code == CloseCode.PROTOCOL_ERROR


def test_server_close_waits_for_the_answer_and_keeps_its_code() -> None:
    hs = CloseHandshake()
    assert hs.start(1008, "rate limit exceeded")
    assert hs.phase is Phase.CLOSE_QUEUED
    assert not hs.open
    assert not hs.start(1000, "again")  # a second close sends nothing
    hs.sent()
    assert hs.phase is Phase.CLOSING
    assert hs.received(1008, "rate limit exceeded") is None  # the answer completes it: no reply
    assert (hs.phase, hs.code, hs.reason) == (Phase.CLOSED, 1008, "rate limit exceeded")


def test_server_close_answered_with_another_code_keeps_the_sent_one() -> None:
    hs = CloseHandshake()
    hs.start(1001, "server shutting down")
    hs.sent()
    assert hs.received(1000, "") is None
    assert hs.code == 1001


@pytest.mark.parametrize("peer", [1000, None, 5000])
def test_peer_close_before_ours_was_sent_is_answered_with_ours_at_once(peer: int | None) -> None:
    """RFC 6455 5.5.1: our close frame was only queued, so it is still owed; the queued data is not."""
    hs = CloseHandshake()
    hs.start(4000, "done")
    assert hs.received(peer, "bye") == Reply(4000, "done", drop_queued=True)
    assert (hs.phase, hs.code, hs.reason) == (Phase.CLOSED, 4000, "done")
    hs.sent()  # the answer reaching the transport changes nothing
    assert (hs.phase, hs.code) == (Phase.CLOSED, 4000)


def test_close_frame_sent_before_the_peer_closed_is_not_sent_again() -> None:
    hs = CloseHandshake()
    hs.start(1008, "slow consumer")
    hs.sent()
    hs.sent()
    assert hs.received(1000, "") is None
    assert not hs.start(1000, "again")
    assert (hs.phase, hs.code, hs.reason) == (Phase.CLOSED, 1008, "slow consumer")


def test_sent_before_any_close_changes_nothing() -> None:
    hs = CloseHandshake()
    hs.sent()
    assert (hs.phase, hs.open, hs.code) == (Phase.OPEN, True, None)


def test_parse_failure_sends_one_close_frame() -> None:
    hs = CloseHandshake()
    assert hs.failed(1007, "invalid utf-8")
    assert (hs.phase, hs.code) == (Phase.CLOSED, 1007)
    assert not hs.failed(1002, "later")
    assert hs.code == 1007


def test_parse_failure_while_closing_sends_nothing_more() -> None:
    hs = CloseHandshake()
    hs.start(1009, "message too big")
    assert not hs.failed(1002, "garbage after our close")
    assert hs.code == 1009


def test_lost_connection_is_1006_unless_a_code_was_decided() -> None:
    hs = CloseHandshake()
    hs.lost()
    assert hs.code == CloseCode.ABNORMAL
    hs2 = CloseHandshake()
    hs2.start(1001, "idle timeout")
    hs2.lost()  # close_timeout passed without an answer
    assert hs2.code == 1001


# --- the send queue ---


def test_queue_bounds_bytes_and_overflows_under_the_close_policy() -> None:
    q = SendQueue(100, drop=False)
    assert q.push(b"a" * 60) is Push.QUEUED
    assert q.push(b"b" * 40) is Push.QUEUED
    assert q.pending == 100
    assert q.push(b"c") is Push.OVERFLOW
    assert q.sealed
    assert q.push(b"d") is Push.REFUSED
    assert q.take() == [b"a" * 60, b"b" * 40]  # what was queued still goes out before the close


def test_a_frame_larger_than_the_limit_goes_into_an_empty_queue() -> None:
    q = SendQueue(10, drop=False)
    assert q.push(b"x" * 50) is Push.QUEUED
    assert q.push(b"y") is Push.OVERFLOW


def test_drop_policy_discards_oldest_and_announces_the_count_first() -> None:
    q = SendQueue(30, drop=True)
    for i in range(5):
        assert q.push(bytes([65 + i]) * 10) is Push.QUEUED
    assert q.pending <= 30
    frames = q.take()
    notice, opcode = split_frame(frames[0])
    assert opcode == TEXT
    assert json.loads(notice) == {"type": "dropped", "count": 2}
    assert frames[1:] == [b"C" * 10, b"D" * 10, b"E" * 10]
    assert q.pending == 0
    assert q.take() == []


def test_every_ping_of_a_pass_is_answered_in_order() -> None:
    q = SendQueue(1000, drop=False)
    for i in range(10):
        q.push_pong(encode_frame(str(i).encode(), PONG))
    assert [split_frame(f) for f in q.take()] == [(str(i).encode(), PONG) for i in range(10)]


def test_unwritten_pongs_are_bounded_and_the_latest_ping_is_answered() -> None:
    q = SendQueue(1000, drop=False)
    for i in range(10_000):
        q.push_pong(encode_frame(str(i).encode(), PONG))
    kept = [encode_frame(str(i).encode(), PONG) for i in range(MAX_PONGS - 1)] + [encode_frame(b"9999", PONG)]
    assert q.pending == sum(map(len, kept))
    q.push_ping(encode_frame(b"", PING))
    q.push_ping(encode_frame(b"", PING))
    q.push(encode("data"))
    assert q.take() == [*kept, encode_frame(b"", PING), encode("data")]
    assert q.pending == 0


def test_sealed_queue_refuses_control_frames_too() -> None:
    q = SendQueue(1000, drop=False)
    q.seal()
    q.push_pong(encode_frame(b"x", PONG))
    assert q.push(b"x") is Push.REFUSED
    assert q.take() == []


def test_clear_forgets_everything() -> None:
    q = SendQueue(1000, drop=True)
    q.push(b"x")
    q.push_pong(encode_frame(b"x", PONG))
    q.clear()
    assert (q.pending, q.take(), q.sealed) == (0, [], True)


# --- frames ---


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_frames_round_trip_at_every_length_boundary(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for opcode in (TEXT, BINARY):
        wire = encode_frame(payload, opcode)
        assert wire[0] == 0x80 | opcode
        assert split_frame(wire) == (payload, opcode)


def test_encode_picks_the_frame_type() -> None:
    assert split_frame(encode("hé")) == ("hé".encode(), TEXT)
    assert split_frame(encode(b"\x00\xff")) == (b"\x00\xff", BINARY)


def test_close_reason_is_cut_on_a_character_boundary() -> None:
    payload = close_payload(1000, "é" * 100)  # 200 bytes of UTF-8
    assert struct.unpack("!H", payload[:2]) == (1000,)
    reason = payload[2:]
    assert len(reason) <= 123
    assert reason.decode() == "é" * 61  # 122 bytes: the 62nd character would be split
    assert len(encode_frame(payload, CLOSE)) <= 127


def test_take_with_a_budget_leaves_the_rest_queued() -> None:
    q = SendQueue(10_000, drop=False)
    q.push_pong(encode_frame(b"p", PONG))
    for i in range(10):
        q.push(bytes([48 + i]) * 100)
    first = q.take(250)
    assert first == [encode_frame(b"p", PONG), b"0" * 100, b"1" * 100]
    assert q.pending == 800
    assert q.take(10) == [b"2" * 100]  # at least one frame, even over the budget
    assert q.take(10_000) == [bytes([48 + i]) * 100 for i in range(3, 10)]
    assert q.pending == 0
    assert q.pending == 0
