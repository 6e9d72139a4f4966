"""Parsing of human durations ("500ms", "20s", "2m") and sizes ("64KiB", "1MiB")."""

from __future__ import annotations

import math
import re

__all__ = ["DURATION_PATTERN", "SIZE_PATTERN", "parse_duration", "parse_size"]

# ASCII digits only: \d would also take Arabic-Indic and other digits.
DURATION_PATTERN = r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*$"
_DURATION = re.compile(DURATION_PATTERN)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
SIZE_PATTERN = r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$"
_SIZE = re.compile(SIZE_PATTERN)
MAX_DURATION = 365 * 24 * 3600.0  # a year: longer is a typo, and timers need finite numbers
MAX_SIZE = 1 << 62
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as ``"500ms"``, ``"20s"``, ``"2m"``, ``"1h"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, '500ms', '20s' or '2m', not a boolean")
    if isinstance(value, int | float):
        seconds = float(value) if abs(value) < 1e300 else math.inf
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f"expected a duration such as 30, '500ms', '20s' or '2m', got {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    if not seconds <= MAX_DURATION:  # also NaN
        raise ValueError(f"a duration must be at most a year (31536000 s), got {value!r}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from a number or a string such as ``"512B"``, ``"64KiB"``, ``"1MiB"``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 65536, '64KiB' or '1MiB', not a boolean")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        scaled = float(m.group(1)) * _SIZE_UNITS[m.group(2)]
        size = int(scaled) if math.isfinite(scaled) else MAX_SIZE + 1
    else:
        raise ValueError(f"expected a size such as 65536, '64KiB' or '1MiB', got {value!r}")
    if size < 0:
        raise ValueError(f"a size cannot be negative, got {value!r}")
    if size > MAX_SIZE:
        raise ValueError(f"a size must be at most 2**62 bytes, got {value!r}")
    return size
