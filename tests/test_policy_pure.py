"""Policy decisions free of I/O: keepalive.KeepAlive, limits.TokenBucket/Admission, proxies.client_address."""

from __future__ import annotations

import ipaddress

import pytest

from wsgate.policy.keepalive import Action, KeepAlive
from wsgate.policy.limits import Admission, Refusal, TokenBucket
from wsgate.policy.proxies import client_address

# --- KeepAlive -------------------------------------------------------------------------------


def test_first_ping_is_due_one_interval_after_start() -> None:
    ka = KeepAlive(interval=1.0, timeout=0.5, idle=0, now=10.0)
    assert ka.due(10.0) == (Action.NONE, 11.0)
    assert ka.due(10.999) == (Action.NONE, 11.0)
    action, deadline = ka.due(11.0)
    assert action is Action.PING
    assert ka.ping_sent == 11.0
    # the next thing to look at is the pong deadline, before the next ping
    assert deadline == pytest.approx(11.5)


def test_unanswered_ping_means_dead_after_timeout() -> None:
    ka = KeepAlive(interval=1.0, timeout=0.5, idle=0, now=0.0)
    assert ka.due(1.0)[0] is Action.PING
    assert ka.due(1.49) == (Action.NONE, pytest.approx(1.5))
    assert ka.due(1.5) == (Action.DEAD, None)


def test_pong_clears_the_outstanding_ping() -> None:
    ka = KeepAlive(interval=1.0, timeout=0.5, idle=0, now=0.0)
    assert ka.due(1.0)[0] is Action.PING
    ka.last_seen = 1.2  # the pong (any frame counts)
    action, deadline = ka.due(1.5)
    assert action is Action.NONE
    assert ka.ping_sent is None
    assert deadline == pytest.approx(2.0)  # only the next ping is pending
    assert ka.due(2.0)[0] is Action.PING
    assert ka.ping_sent == 2.0


def test_frame_seen_before_the_ping_is_not_a_pong() -> None:
    ka = KeepAlive(interval=1.0, timeout=0.5, idle=0, now=0.0)
    ka.last_seen = 0.9
    assert ka.due(1.0)[0] is Action.PING
    assert ka.due(1.5) == (Action.DEAD, None)


def test_answering_every_ping_keeps_the_connection_alive() -> None:
    ka = KeepAlive(interval=1.0, timeout=0.5, idle=0, now=0.0)
    now = 0.0
    pings = 0
    for _ in range(40):
        action, deadline = ka.due(now)
        assert action is not Action.DEAD
        assert deadline is not None
        if action is Action.PING:
            pings += 1
            ka.last_seen = now + 0.1
        now = deadline
    assert pings >= 10


def test_timeout_longer_than_interval_still_detects_a_dead_peer() -> None:
    """interval 1 s, timeout 3 s, never a pong: the peer must be declared dead soon after
    the first ping's timeout. A new ping must not restart the clock of the unanswered one."""
    ka = KeepAlive(interval=1.0, timeout=3.0, idle=0, now=0.0)
    now = 0.0
    seen: list[Action] = []
    for _ in range(20):
        action, deadline = ka.due(now)
        seen.append(action)
        if action is Action.DEAD or deadline is None:
            break
        now = deadline
    assert seen[-1] is Action.DEAD, f"never declared dead; actions: {[a.value for a in seen]}"
    assert now <= 4.0 + 1e-9


def test_heartbeat_timeout_zero_pings_but_never_declares_dead() -> None:
    ka = KeepAlive(interval=1.0, timeout=0, idle=0, now=0.0)
    actions = []
    now = 0.0
    for _ in range(10):
        action, deadline = ka.due(now)
        actions.append(action)
        assert deadline == pytest.approx(now + 1.0 if action is Action.PING else 1.0)
        now = deadline
    assert Action.DEAD not in actions
    assert actions.count(Action.PING) == 9


def test_idle_timeout_closes_a_silent_connection() -> None:
    ka = KeepAlive(interval=0, timeout=0, idle=5.0, now=0.0)
    assert ka.due(0.0) == (Action.NONE, 5.0)
    ka.last_message = 3.0
    assert ka.due(5.0) == (Action.NONE, 8.0)
    assert ka.due(7.99) == (Action.NONE, 8.0)
    assert ka.due(8.0) == (Action.IDLE, None)


def test_pongs_do_not_count_as_activity_for_idle() -> None:
    ka = KeepAlive(interval=1.0, timeout=0.5, idle=2.5, now=0.0)
    now = 0.0
    result = Action.NONE
    for _ in range(20):
        result, deadline = ka.due(now)
        if result is Action.PING:
            ka.last_seen = now + 0.01  # answered, but no data message
        if deadline is None:
            break
        now = deadline
    assert result is Action.IDLE
    assert now == pytest.approx(2.5)


def test_dead_is_reported_before_idle() -> None:
    ka = KeepAlive(interval=1.0, timeout=0.5, idle=1.5, now=0.0)
    assert ka.due(1.0)[0] is Action.PING
    assert ka.due(1.5) == (Action.DEAD, None)


def test_all_zero_disables_everything() -> None:
    ka = KeepAlive(interval=0, timeout=0, idle=0, now=0.0)
    assert not ka.enabled
    assert ka.due(0.0) == (Action.NONE, None)
    assert ka.due(1e9) == (Action.NONE, None)


@pytest.mark.parametrize(
    ("interval", "idle", "enabled"),
    [(0, 0, False), (1.0, 0, True), (0, 1.0, True), (1.0, 1.0, True)],
)
def test_enabled(interval: float, idle: float, enabled: bool) -> None:
    assert KeepAlive(interval=interval, timeout=1.0, idle=idle, now=0.0).enabled is enabled


def test_next_deadline_is_the_earliest_timer() -> None:
    ka = KeepAlive(interval=10.0, timeout=4.0, idle=12.0, now=0.0)
    assert ka.due(0.0) == (Action.NONE, 10.0)
    ka.last_message = 9.0  # idle deadline moves to 21
    action, deadline = ka.due(10.0)
    assert action is Action.PING
    assert deadline == pytest.approx(14.0)  # pong deadline < idle 21 < next ping 20
    ka.last_seen = 11.0
    assert ka.due(14.0) == (Action.NONE, pytest.approx(20.0))
    action, deadline = ka.due(20.0)
    assert action is Action.PING
    assert deadline == pytest.approx(21.0)  # idle comes before the pong deadline 24
    assert ka.due(21.0) == (Action.IDLE, None)


def test_late_check_pings_once_and_reschedules_from_now() -> None:
    ka = KeepAlive(interval=1.0, timeout=0.5, idle=0, now=0.0)
    action, deadline = ka.due(5.0)
    assert action is Action.PING
    assert deadline == pytest.approx(5.5)
    ka.last_seen = 5.1
    assert ka.due(5.5) == (Action.NONE, pytest.approx(6.0))


# --- TokenBucket -----------------------------------------------------------------------------


def test_bucket_allows_a_burst_then_refuses() -> None:
    bucket = TokenBucket(rate=2.0, burst=5, now=0.0)
    assert [bucket.take(0.0) for _ in range(7)] == [True] * 5 + [False] * 2


def test_bucket_refills_at_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=5, now=0.0)
    for _ in range(5):
        assert bucket.take(0.0)
    assert not bucket.take(0.25)  # half a token
    assert bucket.take(0.5)  # one token after 0.5 s at 2/s
    assert not bucket.take(0.5)
    assert bucket.take(1.0)
    assert not bucket.take(1.0)


def test_bucket_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=100.0, burst=3, now=0.0)
    results = [bucket.take(1000.0) for _ in range(5)]
    assert results == [True, True, True, False, False]


@pytest.mark.parametrize(("rate", "burst", "seconds"), [(1.0, 1, 10), (5.0, 10, 4), (0.5, 2, 20)])
def test_bucket_sustained_rate(rate: float, burst: int, seconds: int) -> None:
    """Taking as fast as allowed for ``seconds`` lets through burst + rate * seconds."""
    bucket = TokenBucket(rate=rate, burst=burst, now=0.0)
    steps = 100
    taken = 0
    for i in range(seconds * steps + 1):
        now = i / steps
        while bucket.take(now):
            taken += 1
    assert taken == pytest.approx(burst + rate * seconds, abs=1)


# --- Admission -------------------------------------------------------------------------------


def test_admission_global_cap_is_503() -> None:
    adm = Admission(max_total=2)
    assert adm.admit("/a", "1.1.1.1", None, None) is None
    assert adm.admit("/b", "2.2.2.2", None, None) is None
    refusal = adm.admit("/c", "3.3.3.3", None, None)
    assert isinstance(refusal, Refusal)
    assert refusal.status == 503
    assert "server" in refusal.reason
    assert adm.total == 2


def test_admission_endpoint_cap_is_503_and_per_endpoint() -> None:
    adm = Admission()
    assert adm.admit("/a", "1.1.1.1", 1, None) is None
    refusal = adm.admit("/a", "2.2.2.2", 1, None)
    assert refusal is not None
    assert refusal.status == 503
    assert "endpoint" in refusal.reason
    assert adm.admit("/b", "2.2.2.2", 1, None) is None  # another endpoint has its own count


def test_admission_per_ip_cap_is_429_per_ip_and_endpoint() -> None:
    adm = Admission()
    assert adm.admit("/a", "1.1.1.1", None, 2) is None
    assert adm.admit("/a", "1.1.1.1", None, 2) is None
    refusal = adm.admit("/a", "1.1.1.1", None, 2)
    assert refusal == Refusal(429, "too many connections from your address")
    assert adm.admit("/a", "2.2.2.2", None, 2) is None  # another client
    assert adm.admit("/b", "1.1.1.1", None, 2) is None  # another endpoint
    assert adm.total == 4


def test_refusal_books_nothing() -> None:
    adm = Admission(max_total=10)
    assert adm.admit("/a", "1.1.1.1", 5, 1) is None
    assert adm.admit("/a", "1.1.1.1", 5, 1) is not None
    assert adm.total == 1
    assert adm.per_endpoint["/a"] == 1
    assert adm.per_ip[("/a", "1.1.1.1")] == 1


def test_release_frees_the_slot() -> None:
    adm = Admission(max_total=1)
    assert adm.admit("/a", "1.1.1.1", 1, 1) is None
    assert adm.admit("/a", "1.1.1.1", 1, 1) is not None
    adm.release("/a", "1.1.1.1")
    assert adm.total == 0
    assert adm.per_endpoint["/a"] == 0
    assert ("/a", "1.1.1.1") not in adm.per_ip  # no per-IP entries pile up
    assert adm.admit("/a", "1.1.1.1", 1, 1) is None


def test_many_clients_come_and_go_leaving_no_state() -> None:
    adm = Admission(max_total=1000)
    clients = [("/a" if i % 2 else "/b", f"10.0.{i // 256}.{i % 256}") for i in range(500)]
    for path, ip in clients:
        assert adm.admit(path, ip, None, 1) is None
    assert adm.total == 500
    for path, ip in clients:
        adm.release(path, ip)
    assert adm.total == 0
    assert not adm.per_ip
    assert all(count == 0 for count in adm.per_endpoint.values())


def test_no_caps_admits_everything() -> None:
    adm = Admission()
    for _ in range(100):
        assert adm.admit("/a", "1.1.1.1", None, None) is None
    assert adm.total == 100


# --- client_address --------------------------------------------------------------------------

PROXIES = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "10.0.0.0/8", "::1/128", "fd00::/8")]


@pytest.mark.parametrize(
    ("peer", "xff", "client"),
    [
        # no header, or an untrusted peer: the peer is the client
        ("127.0.0.1", None, "127.0.0.1"),
        ("127.0.0.1", "", "127.0.0.1"),
        ("198.51.100.7", "203.0.113.5", "198.51.100.7"),
        ("198.51.100.7", "127.0.0.1", "198.51.100.7"),
        ("198.51.100.7", "10.0.0.1, 10.0.0.2", "198.51.100.7"),
        # a trusted peer: the rightmost untrusted hop
        ("127.0.0.1", "203.0.113.5", "203.0.113.5"),
        ("127.0.0.1", "1.1.1.1, 203.0.113.5", "203.0.113.5"),  # left part is the client's own
        ("127.0.0.1", "203.0.113.5,198.51.100.9", "198.51.100.9"),
        ("127.0.0.1", "  203.0.113.5  ", "203.0.113.5"),
        # chains of trusted proxies are walked through
        ("127.0.0.1", "203.0.113.5, 10.0.0.2", "203.0.113.5"),
        ("127.0.0.1", "203.0.113.5, 10.0.0.3, 10.0.0.2", "203.0.113.5"),
        ("127.0.0.1", "1.1.1.1, 203.0.113.5, 10.0.0.3, 10.0.0.2", "203.0.113.5"),
        ("10.9.9.9", "8.8.8.8, 203.0.113.5, 127.0.0.1", "203.0.113.5"),
        # every hop trusted: the leftmost one
        ("127.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.3"),
        # empty items are skipped
        ("127.0.0.1", " , ,", "127.0.0.1"),
        ("127.0.0.1", "203.0.113.5, , ", "203.0.113.5"),
        # IPv6
        ("::1", "2001:db8::1", "2001:db8::1"),
        ("::1", "2001:db8::1, fd00::2", "2001:db8::1"),
        ("::1", "203.0.113.5, 2001:db8::7", "2001:db8::7"),
        ("127.0.0.1", "2001:db8::1, ::1", "2001:db8::1"),
        ("2001:db8::9", "203.0.113.5", "2001:db8::9"),
        # forged garbage left of a real address is ignored
        ("127.0.0.1", "<script>, 203.0.113.5", "203.0.113.5"),
        ("127.0.0.1", "garbage, 10.0.0.2, 203.0.113.5", "203.0.113.5"),
        # a peer that is no IP address at all (e.g. a unix socket) is never trusted
        ("unix", "203.0.113.5", "unix"),
    ],
)
def test_client_address(peer: str, xff: str | None, client: str) -> None:
    assert client_address(peer, xff, PROXIES) == client


def test_no_trusted_proxies_means_the_header_is_ignored() -> None:
    assert client_address("127.0.0.1", "203.0.113.5", []) == "127.0.0.1"


@pytest.mark.parametrize(
    "xff",
    ["garbage", "203.0.113.5, garbage", "not-an-ip", "203.0.113.5, 999.1.1.1", "10.0.0.2, ???"],
)
def test_unparseable_hop_never_becomes_the_client_address(xff: str) -> None:
    """An address that is not an IP must not be used as the client: per-IP limits and
    logs would key on it. The walk stops there and the last address known good (the
    trusted peer) is the client."""
    result = client_address("127.0.0.1", xff, PROXIES)
    assert result == "127.0.0.1", f"client address {result!r} taken from X-Forwarded-For {xff!r}"
