"""Claim-based admission, free of I/O: ``allow:`` rules and the ``rooms`` claim."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from ..config.auth import claim_text

__all__ = ["allowed", "room_allowed"]


def _scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _matches(claim: object, accepted: list[str]) -> bool:
    if isinstance(claim, list):
        return any(_scalar(item) and claim_text(item) in accepted for item in claim)
    # An object-valued claim never matches: its string form is not something a rule names.
    return _scalar(claim) and claim_text(claim) in accepted


def allowed(claims: Mapping[str, Any], allow: Mapping[str, list[str]]) -> bool:
    """True if every rule in ``allow`` is met by ``claims``.

    A rule ``claim: [values]`` is met when the claim equals one of the values (compared
    as text), or, for a list-valued claim, when any element does. A missing claim
    fails its rule; no rules at all allow everyone.
    """
    return all(key in claims and _matches(claims[key], accepted) for key, accepted in allow.items())


@functools.lru_cache(maxsize=1024)
def _room_pattern(pattern: str) -> re.Pattern[str]:
    # fnmatch would also treat '?' and '[...]' as wildcards; room names may contain
    # them, so only '*' is special here.
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def room_allowed(rooms_claim: object, room: str) -> bool:
    """True if the ``rooms`` claim (a list of names, ``*`` matching any run) admits ``room``.

    A claim that is not a list of strings admits nothing; a lone string is taken as a
    one-element list.
    """
    if isinstance(rooms_claim, str):
        rooms_claim = [rooms_claim]
    if not isinstance(rooms_claim, list):
        return False
    return any(isinstance(p, str) and _room_pattern(p).fullmatch(room) is not None for p in rooms_claim)
