"""Claim-based admission, free of I/O: ``allow:`` rules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config.auth import claim_text

__all__ = ["allowed"]


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
