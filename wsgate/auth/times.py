"""Reading a time that came from outside (a token's claim, a backend's answer), free of I/O."""

from __future__ import annotations

import math
from typing import TypeGuard

__all__ = ["is_number", "unix_time"]


def is_number(value: object) -> TypeGuard[int | float]:
    """Whether ``value`` is a JSON number: an int or float, neither a boolean nor NaN."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def unix_time(value: object) -> float | None:
    """``value`` as unix seconds, or None when it is not a number a float can hold.

    JSON integers have no size limit (``10**400`` converts to no float) and ``1e400``
    parses as infinity; both are refused here rather than by an ``OverflowError`` in
    whatever does arithmetic with the time later. Booleans and NaN are not times.
    """
    if type(value) is float:  # the common cases first: a time is read for every fresh token
        return value if math.isfinite(value) else None
    if type(value) is not int and not is_number(value):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None
