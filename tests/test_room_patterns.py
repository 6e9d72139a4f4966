"""Chat's ``rooms`` claim patterns: only ``*`` is special, and matching takes time linear
in the room name whatever the pattern (the client picks the name, the issuer the pattern,
and a backtracking match would stall the event loop)."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.chat import room_allowed

# Letters that fnmatch treats literally: on these, its '*' is the only wildcard, as ours.
LITERALS = "ab."


@settings(max_examples=400, deadline=None)
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


def test_hostile_patterns_against_a_long_name_finish_at_once() -> None:
    """Patterns of many stars against a 10,000-character name, near misses included.
    A regex takes hours on these, so they run in a child process that a timeout
    bounds; inside it each match must take well under a second."""
    script = textwrap.dedent("""
        import json, time
        from handlers.chat import room_allowed
        name = "a" * 10_000
        patterns = ["*a" * 40 + "*b", "*a" * 40 + "*b*", "*a" * 40 + "*", "*" + "a*" * 5000 + "b*a",
                    "a*" * 9_999 + "a", "a*" * 10_000 + "a"]
        results, longest = [], 0.0
        for pattern in patterns:
            started = time.perf_counter()
            results.append(room_allowed([pattern], name))
            longest = max(longest, time.perf_counter() - started)
        print(json.dumps({"results": results, "longest": longest}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=20, check=True,
                          cwd=Path(__file__).resolve().parent.parent)
    answer = json.loads(done.stdout)
    assert answer["results"] == [False, False, True, False, True, False]
    assert answer["longest"] < 0.5, answer
