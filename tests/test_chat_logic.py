"""The pure parts of the chat handler: message parsing and display names."""

from __future__ import annotations

import re

import pytest
from wsgate.builtins.chat import (
    ChatInputError,
    ChatOptions,
    candidate_names,
    clean_name,
    parse_client_message,
    room_allowed,
)


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("hello", "hello"),
        ("  hello  ", "  hello  "),  # kept as sent; only all-blank is refused
        ("héllo wörld ✓", "héllo wörld ✓"),
        ("line one\nline two", "line one\nline two"),
        ('{"type": "message", "text": "hi"}', "hi"),
        ('{"text": "hi"}', "hi"),  # type defaults to message
        ('  {"type": "message", "text": "hi"}', "hi"),
        ('{"type": "message", "text": "hi", "extra": 1}', "hi"),
        ('{"type": "message", "text": "{\\"nested\\": 1}"}', '{"nested": 1}'),
        # JSON that is not an object, or not JSON at all, is plain text
        ("[1, 2]", "[1, 2]"),
        ('"quoted"', '"quoted"'),
        ("42", "42"),
        ("null", "null"),
        ("{not json", "{not json"),
        ("{}}", "{}}"),
    ],
)
def test_parse_accepts(raw: str, text: str) -> None:
    assert parse_client_message(raw, 2000) == text


@pytest.mark.parametrize(
    "raw",
    [
        '{"type": "join"}',
        '{"type": "message"}',
        '{"type": "message", "text": 5}',
        '{"type": "message", "text": null}',
        '{"type": "message", "text": ["a"]}',
        '{"type": "message", "text": {"a": 1}}',
        '{"text": true}',
        '{"type": 1, "text": "hi"}',
        "{}",
    ],
)
def test_parse_refuses_objects_of_the_wrong_shape(raw: str) -> None:
    with pytest.raises(ChatInputError) as info:
        parse_client_message(raw, 2000)
    assert '{"type": "message", "text": "..."}' in str(info.value)


@pytest.mark.parametrize("raw", ["", " ", "\n\t ", '{"text": ""}', '{"type": "message", "text": "   "}'])
def test_parse_refuses_empty(raw: str) -> None:
    with pytest.raises(ChatInputError, match="empty message"):
        parse_client_message(raw, 2000)


@pytest.mark.parametrize("limit", [1, 10, 2000])
def test_parse_length_limit(limit: int) -> None:
    assert parse_client_message("x" * limit, limit) == "x" * limit
    with pytest.raises(ChatInputError) as info:
        parse_client_message("x" * (limit + 1), limit)
    message = str(info.value)
    assert "too long" in message
    assert re.search(rf"\bat most {limit}\b", message)
    assert str(limit + 1) in message


def test_parse_length_limit_applies_to_the_json_text_not_the_frame() -> None:
    wrapped = '{"type": "message", "text": "' + "y" * 10 + '"}'
    assert parse_client_message(wrapped, 10) == "y" * 10
    with pytest.raises(ChatInputError, match="at most 9"):
        parse_client_message(wrapped, 9)


def test_parse_counts_characters_not_bytes() -> None:
    assert parse_client_message("é" * 5, 5) == "é" * 5


def test_chat_input_error_is_a_value_error() -> None:
    assert issubclass(ChatInputError, ValueError)


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "name"),
    [
        ("alice", "alice"),
        ("  alice  ", "alice"),
        ("alice   smith", "alice smith"),
        ("a\tb\nc", "a b c"),
        ("Zoë", "Zoë"),
        ("x" * 32, "x" * 32),
        ("x" * 33, "x" * 32),
        ("y" * 100, "y" * 32),
        ("   " + "z" * 40, "z" * 32),
    ],
)
def test_clean_name(requested: str, name: str) -> None:
    assert clean_name(requested) == name


def test_clean_name_cut_does_not_leave_trailing_space() -> None:
    """Cutting at 32 characters must not leave ``"aaa… "``: a trimmed name has no edge spaces
    (and ``"alice "`` would be a different member from ``"alice"``)."""
    name = clean_name("a" * 31 + " bob")
    assert len(name) <= 32
    assert name == name.strip()


@pytest.mark.parametrize("requested", [None, "", "   ", "\t\n"])
def test_clean_name_generates_guest_names(requested: str | None) -> None:
    name = clean_name(requested)
    assert re.fullmatch(r"guest-[0-9a-f]{4}", name)


def test_guest_names_vary() -> None:
    names = {clean_name(None) for _ in range(50)}
    assert len(names) > 40  # 65536 possibilities: collisions among 50 are rare


def test_candidate_names() -> None:
    names = candidate_names("alice")
    assert names[0] == "alice"
    assert names[1:] == [f"alice-{n}" for n in range(2, 21)]
    assert len(names) == 20
    assert len(set(names)) == 20


def test_candidate_names_of_a_guest() -> None:
    names = candidate_names("guest-ab12")
    assert names[:3] == ["guest-ab12", "guest-ab12-2", "guest-ab12-3"]


# --- options ---------------------------------------------------------------------------------


def test_chat_options_defaults() -> None:
    options = ChatOptions()
    assert (options.history, options.max_text, options.default_room) == (50, 2000, "lobby")


@pytest.mark.parametrize(
    "bad",
    [{"history": -1}, {"history": 10_001}, {"max_text": 0}, {"default_room": "no spaces"}, {"default_room": ""},
     {"unknown": 1}],
)
def test_chat_options_refuse(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        ChatOptions.model_validate(bad)


@pytest.mark.parametrize(
    ("rooms", "room", "expected"),
    [
        (["lobby"], "lobby", True),
        (["lobby"], "lobby2", False),
        (["team-*"], "team-red", True),
        (["team-*"], "team-", True),
        (["team-*"], "teams", False),
        (["*"], "anything/at all", True),
        (["a*c"], "abbbc", True),
        (["a*c"], "abbbd", False),
        (["room?"], "room?", True),
        (["room?"], "room1", False),
        (["[ab]"], "[ab]", True),
        (["[ab]"], "a", False),
        (["Lobby"], "lobby", False),
        ("lobby", "lobby", True),
        ("lobby", "lobbyist", False),
        (None, "lobby", False),
        ({"lobby": True}, "lobby", False),
        ([1, "x"], "1", False),
        ([], "lobby", False),
    ],
)
def test_room_allowed(rooms: object, room: str, expected: bool) -> None:
    assert room_allowed(rooms, room) is expected
