"""Log setup: readable text by default, one JSON object per line with ``format: json``.

Log lines carry client data (query strings, origins, close reasons), so neither format
lets it forge a line or a field: the text format writes fields logfmt-style, quoting
and escaping any value that could be mistaken for more than one value, and escapes
control characters in the message; JSON escapes everything by construction.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

from .httperrors import BadRequestLogFilter
from .redact import redact_query  # the handshake log's query: the same rule as every URL shown

__all__ = ["escape_controls", "logfmt_value", "redact_query", "setup_logging"]

# Characters that can end or fake a line, or hide text, on a terminal or in a log viewer:
# C0, DEL, C1, the Unicode line and paragraph separators, and bidirectional overrides.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
# A value with any of these needs quotes to stay one logfmt value.
_NEEDS_QUOTES = re.compile("[\\s\"=\\\\\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in _ESCAPES:
        return _ESCAPES[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escape_controls(text: str) -> str:
    """``text`` with control characters written as ``\\n``, ``\\x1b``, ``\\u2028``…"""
    return _CONTROL.sub(_escape_char, text)


def logfmt_value(value: object) -> str:
    """``value`` as one logfmt value: as it is if plain, else ``"..."`` with escapes."""
    text = str(value)
    if text and not _NEEDS_QUOTES.search(text):
        return text
    return '"' + escape_controls(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


# Attributes every LogRecord has; anything else was passed in ``extra`` and is a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value…``; a traceback follows on its own lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        # The message may hold client data (a refused Origin, say); the traceback that
        # format() appends after this is ours and keeps its lines.
        line = escape_controls(super().formatMessage(record))
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{k}={logfmt_value(v)}" for k, v in fields.items() if k != "event")
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``json.dumps`` escapes every control character."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str, fmt: str) -> None:
    """Send wsgate's (and aiohttp's) logs to stderr in the configured format."""
    # What the Logging HOWTO's "Optimization" section lists: no formatter here reads the
    # caller, thread or process, and each costs time on every record (two per connection).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(BadRequestLogFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
