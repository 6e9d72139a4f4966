"""The timer wheel on a loop whose clock the test moves: what fires, when, and how often.

The wheel asks its loop only for ``time()`` and ``call_at()``, so a small stand-in
with a hand-moved clock drives it exactly, with no sleeping.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from wsgate.gateway.timers import TimerWheel

RESOLUTION = 0.05


@dataclass(order=True)
class Handle:
    when: float
    seq: int
    callback: Callable[..., None] = field(compare=False)
    args: tuple[Any, ...] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class ManualLoop:
    """``time()`` and ``call_at()`` of an event loop, on a clock moved by ``advance``.

    ``early`` runs the next timer that much before its time, once, as asyncio may within
    its clock resolution (after that the clock has moved on).
    """

    def __init__(self, early: float = 0.0) -> None:
        self.now = 0.0
        self.early = early
        self._timers: list[Handle] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> Handle:
        handle = Handle(when, next(self._seq), callback, args)
        heapq.heappush(self._timers, handle)
        return handle

    @property
    def armed(self) -> list[float]:
        """When the timers not cancelled are due."""
        return sorted(h.when for h in self._timers if not h.cancelled)

    def advance(self, to: float) -> None:
        """Move the clock to ``to``, running every timer due by then, in order."""
        while self._timers and self._timers[0].when - self.early <= to:
            handle = heapq.heappop(self._timers)
            if handle.cancelled:
                continue
            self.now = max(self.now, handle.when - self.early)
            self.early = 0.0
            handle.callback(*handle.args)
        self.now = to


@dataclass(eq=False)
class Target:
    """Records when it fired; ``then`` runs inside ``on_timer``."""

    loop: ManualLoop
    fired: list[float] = field(default_factory=list)
    then: Callable[[Target], object] | None = None

    def on_timer(self) -> None:
        self.fired.append(self.loop.now)
        if self.then is not None:
            self.then(self)


def wheel_on(loop: ManualLoop) -> TimerWheel:
    return TimerWheel(cast(asyncio.AbstractEventLoop, loop), RESOLUTION)


@pytest.mark.parametrize("when", [0.05, 0.97, 1.0, 1.001, 3.333])
def test_a_target_fires_once_at_its_slot_never_before_its_time(when: float) -> None:
    loop = ManualLoop()
    wheel = wheel_on(loop)
    target = Target(loop)
    wheel.schedule(when, target)
    loop.advance(when - 0.001)
    assert target.fired == []
    loop.advance(when + RESOLUTION)
    assert len(target.fired) == 1
    assert when <= target.fired[0] <= when + RESOLUTION  # up to one resolution late
    loop.advance(when + 10)
    assert len(target.fired) == 1


def test_targets_fire_in_the_order_of_their_times() -> None:
    loop = ManualLoop()
    wheel = wheel_on(loop)
    order: list[str] = []
    for name, when in [("c", 0.9), ("a", 0.1), ("b", 0.5)]:
        wheel.schedule(when, Target(loop, then=functools.partial(lambda name, _t: order.append(name), name)))
    loop.advance(0.3)
    assert order == ["a"]
    loop.advance(2.0)
    assert order == ["a", "b", "c"]


def test_one_loop_timer_for_many_targets_and_the_earliest_slot() -> None:
    loop = ManualLoop()
    wheel = wheel_on(loop)
    late = [Target(loop) for _ in range(100)]
    for i, target in enumerate(late):
        wheel.schedule(2.0 + i * 0.2, target)  # a hundred slots
    assert loop.armed == [pytest.approx(2.0)]
    early = Target(loop)
    wheel.schedule(0.5, early)  # earlier than the armed slot: the loop timer moves
    assert loop.armed == [pytest.approx(0.5)]
    loop.advance(0.5)
    assert early.fired == [0.5]
    assert loop.armed == [pytest.approx(2.0)]  # re-armed for the next slot
    loop.advance(100)
    assert all(len(t.fired) == 1 for t in late)


def test_many_sessions_in_one_slot_fire_together_in_one_pass() -> None:
    loop = ManualLoop()
    wheel = wheel_on(loop)
    targets = [Target(loop) for _ in range(1000)]
    slots = {wheel.schedule(1.0 - i * 0.00004, t) for i, t in enumerate(targets)}  # all within one slot
    assert len(slots) == 1
    assert len(loop.armed) == 1
    loop.advance(1.0)
    assert [t.fired for t in targets] == [[1.0]] * 1000


def test_cancel_takes_out_one_target_and_leaves_the_others_of_its_slot() -> None:
    loop = ManualLoop()
    wheel = wheel_on(loop)
    kept, cancelled = Target(loop), Target(loop)
    slot = wheel.schedule(1.0, kept)
    assert wheel.schedule(1.0, cancelled) == slot
    wheel.cancel(slot, cancelled)
    wheel.cancel(slot, cancelled)  # twice: nothing more happens
    loop.advance(5)
    assert kept.fired == [1.0]
    assert cancelled.fired == []


def test_cancel_of_a_slot_that_fired_is_a_no_op_and_spares_the_target_rescheduled_from_it() -> None:
    loop = ManualLoop()
    wheel = wheel_on(loop)
    # As a session does: on_timer schedules the next deadline.
    target = Target(loop, then=lambda t: wheel.schedule(loop.now + 1.0, t) if len(t.fired) < 2 else None)
    first = wheel.schedule(1.0, target)
    loop.advance(1.0)
    assert target.fired == [1.0]
    wheel.cancel(first, target)  # the old slot is gone: the new deadline stands
    loop.advance(2.0)
    assert target.fired == [1.0, 2.0]
    loop.advance(10)
    assert target.fired == [1.0, 2.0]


def test_rescheduling_is_cancel_then_schedule_and_fires_only_at_the_new_time() -> None:
    loop = ManualLoop()
    wheel = wheel_on(loop)
    target = Target(loop)
    slot = wheel.schedule(1.0, target)
    wheel.cancel(slot, target)
    wheel.schedule(3.0, target)
    loop.advance(2.9)
    assert target.fired == []
    loop.advance(3.0)
    assert target.fired == [3.0]
    # Rescheduled earlier than before: the earlier time wins.
    slot = wheel.schedule(9.0, target)
    wheel.cancel(slot, target)
    wheel.schedule(4.0, target)
    loop.advance(20)
    assert target.fired == [3.0, 4.0]


def test_a_deadline_already_past_fires_on_the_next_timer_pass() -> None:
    loop = ManualLoop()
    wheel = wheel_on(loop)
    loop.advance(10)
    target = Target(loop)
    wheel.schedule(5.0, target)
    loop.advance(10)  # no clock movement, only the due timers run
    assert target.fired == [10]


def test_a_target_scheduling_a_past_deadline_from_on_timer_fires_in_the_same_pass() -> None:
    loop = ManualLoop()
    wheel = wheel_on(loop)
    target = Target(loop, then=lambda t: wheel.schedule(0.5, t) if len(t.fired) < 2 else None)
    wheel.schedule(1.0, target)
    loop.advance(1.0)
    assert target.fired == [1.0, 1.0]
    later = Target(loop)
    wheel.schedule(2.0, later)  # the wheel is still armed correctly afterwards
    loop.advance(2.0)
    assert later.fired == [2.0]


def test_a_loop_timer_that_runs_early_fires_nothing_early() -> None:
    # asyncio runs a timer up to its clock resolution before its time: the wheel then
    # looks again rather than fire a target before its deadline.
    loop = ManualLoop(early=0.001)
    wheel = wheel_on(loop)
    target = Target(loop)
    wheel.schedule(1.0, target)
    loop.advance(0.9995)
    assert target.fired == []
    loop.advance(1.0)
    assert target.fired == [1.0]


def test_close_forgets_every_target_and_the_wheel_can_be_used_again() -> None:
    loop = ManualLoop()
    wheel = wheel_on(loop)
    forgotten = Target(loop)
    wheel.schedule(6.0, forgotten)
    wheel.close()
    assert loop.armed == []
    loop.advance(5)
    assert forgotten.fired == []
    again = Target(loop)
    wheel.schedule(6.0, again)
    same_slot = Target(loop)
    wheel.schedule(6.0, same_slot)
    loop.advance(6.0)
    assert again.fired == [6.0]
    assert same_slot.fired == [6.0]
    assert forgotten.fired == []


async def test_on_a_real_loop_a_target_fires_after_its_time() -> None:
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop, 0.005)
    fired = asyncio.Event()
    at: list[float] = []

    class Real:
        def on_timer(self) -> None:
            at.append(loop.time())
            fired.set()

    when = loop.time() + 0.01
    wheel.schedule(when, Real())
    async with asyncio.timeout(5):
        await fired.wait()
    assert at[0] >= when
    wheel.close()


def test_a_target_that_raises_costs_the_others_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """The rest of its slot still fires, later slots too, and the failure is logged."""
    loop = ManualLoop()
    wheel = wheel_on(loop)

    def explode(_: Target) -> None:
        raise RuntimeError("boom")

    first, bad, last, later = Target(loop), Target(loop, then=explode), Target(loop), Target(loop)
    for target in (first, bad, last):
        wheel.schedule(1.0, target)
    wheel.schedule(2.0, later)
    with caplog.at_level(logging.ERROR, "wsgate.gateway"):
        loop.advance(1.0)
        loop.advance(2.0)
    assert (first.fired, bad.fired, last.fired, later.fired) == ([1.0], [1.0], [1.0], [2.0])
    assert "on_timer of" in caplog.text
    assert "boom" in caplog.text
