"""The instances serving one ``channels`` endpoint, for the server API's ``info`` and ``channels``.

Each instance announces its counts every ``ANNOUNCE_EVERY`` seconds (a few numbers, as
Centrifugo's nodes do); ``info`` lists the instances heard from lately. ``channels``
asks every instance at once and sums what they answer within ``SURVEY_TIMEOUT``: the
channel lists are too long to announce every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from wsgate import BrokerError, Context

__all__ = ["Nodes"]

ANNOUNCE_EVERY = 2.0
LOST_AFTER = 3 * ANNOUNCE_EVERY  # an instance not heard from for this long is left out
SURVEY_TIMEOUT = 1.0
_TOPIC = "nodes"


class Nodes:
    """This instance's view of the endpoint's instances."""

    def __init__(self, context: Context, version: str, counts: Callable[[], dict[str, int]],
                 channels: Callable[[], dict[str, int]]) -> None:
        self._context = context
        self._version = version
        self._counts = counts  # num_clients, num_users, num_subs, num_channels here
        self._channels = channels  # subscribers here per channel
        self.uid = str(uuid.uuid4())
        self._started = time.monotonic()
        self._heard: dict[str, tuple[float, dict[str, Any]]] = {}  # other instances: when, what
        self._surveys: dict[str, tuple[asyncio.Event, dict[str, dict[str, int]]]] = {}

    async def start(self) -> None:
        await self._context.listen(_TOPIC, self._on_signal)
        self._context.spawn(self._announce, "announce")

    async def stop(self) -> None:
        with contextlib.suppress(BrokerError):
            await self._context.signal(_TOPIC, json.dumps({"gone": self.uid}))

    def here(self) -> dict[str, Any]:
        """This instance as ``info`` shows a node."""
        name = os.uname().nodename
        return {"uid": self.uid, "name": f"{name}:{os.getpid()}", "version": self._version, **self._counts(),
                "uptime": int(time.monotonic() - self._started)}

    def all(self) -> list[dict[str, Any]]:
        """This instance and every other one heard from within LOST_AFTER."""
        now = time.monotonic()
        for uid, (when, _) in list(self._heard.items()):
            if now - when > LOST_AFTER:
                del self._heard[uid]
        return [self.here(), *(info for _, info in self._heard.values())]

    async def channels(self, pattern: str) -> dict[str, int]:
        """Subscribers per channel matching ``pattern`` (shell-style; "" all), on every instance."""
        survey = str(uuid.uuid4())
        done, answers = asyncio.Event(), {self.uid: self._matching(pattern)}
        self._surveys[survey] = (done, answers)
        expected = {info["uid"] for info in self.all()}
        try:
            await self._context.signal(_TOPIC, json.dumps({"survey": survey, "from": self.uid, "pattern": pattern}))
            if not expected <= answers.keys():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SURVEY_TIMEOUT):
                        while not expected <= answers.keys():
                            done.clear()
                            await done.wait()
        finally:
            del self._surveys[survey]
        total: dict[str, int] = {}
        for counts in answers.values():
            for channel, n in counts.items():
                total[channel] = total.get(channel, 0) + n
        return total

    def _matching(self, pattern: str) -> dict[str, int]:
        return {c: n for c, n in self._channels().items() if not pattern or fnmatch.fnmatchcase(c, pattern)}

    async def _announce(self) -> None:
        while True:
            with contextlib.suppress(BrokerError):
                await self._context.signal(_TOPIC, json.dumps({"node": self.here()}))
            await asyncio.sleep(ANNOUNCE_EVERY)

    def _on_signal(self, message: str) -> None:
        signal = json.loads(message)
        if "node" in signal:
            if signal["node"]["uid"] != self.uid:
                self._heard[signal["node"]["uid"]] = (time.monotonic(), signal["node"])
        elif "gone" in signal:
            self._heard.pop(signal["gone"], None)
        elif "survey" in signal and signal["from"] != self.uid:
            answer = {"answer": signal["survey"], "uid": self.uid, "channels": self._matching(signal["pattern"])}
            self._context.spawn(functools.partial(self._context.signal, _TOPIC, json.dumps(answer)), "survey answer")
        elif "answer" in signal and signal["answer"] in self._surveys:
            done, answers = self._surveys[signal["answer"]]
            answers[signal["uid"]] = signal["channels"]
            done.set()
