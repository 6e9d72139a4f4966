"""Chat's ``rooms`` claim patterns: only ``*`` is special, and matching takes time linear
in the room name whatever the pattern (the client picks the name, the issuer the pattern,
and a backtracking match would stall the event loop)."""

from __future__ import annotations

import fnmatch
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.chat import room_allowed

# Letters that fnmatch treats literally: on these, its '*' is the only wildcard, as ours.
LITERALS = "ab."


@settings(max_examples=300, deadline=None)
@given(pattern=st.text(alphabet=LITERALS + "*", max_size=10), room=st.text(alphabet=LITERALS, max_size=12))
def test_star_patterns_match_as_fnmatch_does(pattern: str, room: str) -> None:
    assert room_allowed([pattern], room) is fnmatch.fnmatchcase(room, pattern)


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(st.text(alphabet="ab", max_size=3), min_size=1, max_size=6),
       runs=st.lists(st.text(alphabet="ab.", max_size=5), min_size=6, max_size=6))
def test_a_room_built_from_the_pattern_matches_it(pieces: list[str], runs: list[str]) -> None:
    """Every star replaced by any run of characters gives a name the pattern admits."""
    pattern = "*".join(pieces)
    room = "".join(piece + (runs[i] if i < len(pieces) - 1 else "") for i, piece in enumerate(pieces))
    assert room_allowed([pattern], room)


HOSTILE = [
    # (pattern, room, admitted): the case first, then 10,000 characters
    ("*a" * 6 + "*b", "a" * 64, False),
    ("*a" * 40 + "*b", "a" * 10_000, False),
    ("*a" * 40 + "*b*", "a" * 10_000, False),
    ("*a" * 40 + "*", "a" * 10_000, True),
    ("*" + "a*" * 5_000 + "b*a", "a" * 10_000, False),
    ("a*" * 9_999 + "a", "a" * 10_000, True),
    ("a*" * 10_000 + "a", "a" * 10_000, False),
]


def test_hostile_patterns_against_long_names_finish_at_once() -> None:
    """Patterns of many stars, near misses included, each well under a second. The
    cases grow: a backtracking matcher spends seconds on the first (64 characters) and
    fails there, before the ones it would spend hours on."""
    for pattern, room, admitted in HOSTILE:
        started = time.process_time()  # CPU time: another process's load does not stretch it
        assert room_allowed([pattern], room) is admitted, pattern[:20]
        assert time.process_time() - started < 0.5, (pattern[:20], len(room))
