"""One short, rate-limited log line for a malformed HTTP request instead of a traceback.

aiohttp logs every request it cannot parse with a full traceback (about 700 bytes);
a client sending garbage in a loop would fill the disk. The request already got its
400; the operator needs to know it happens, not where aiohttp's parser noticed. The
parser's message quotes the offending line, an ``Authorization`` or ``Cookie`` value
included, so none of the request's bytes are logged.
"""

from __future__ import annotations

import logging
import time

from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["BadRequestLogFilter"]


class BadRequestLogFilter(logging.Filter):
    """For ``aiohttp.server``: parse errors become one line, at most one per ``interval`` s."""

    def __init__(self, interval: float = 1.0) -> None:
        super().__init__()
        self._interval = interval
        self._next = 0.0
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return False
        self._next = now + self._interval
        more = f" ({self._suppressed} more since the last one logged)" if self._suppressed else ""
        peer = record.getMessage().removeprefix("Error handling request").strip()
        record.msg = f"malformed HTTP request {peer}: {type(exc).__name__} {exc.code}{more}"
        record.args = ()
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        self._suppressed = 0
        return True
