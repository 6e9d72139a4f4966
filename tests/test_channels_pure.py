"""The channels handler's pure parts: frames, errors, channel names; and the hub's numbered payloads."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgate.builtins.channels.names import allowed_users, check_channel, namespace_of, user_limited
from wsgate.builtins.channels.protocol import MESSAGES, Command, ProtocolError, ReplyError, error, parse_frame

from wsgate.gateway.hub import numbered_parts

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=20) | \
    st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=15)
params = st.dictionaries(st.text(max_size=10), json_values, max_size=4)
methods = st.text(min_size=1, max_size=15).filter(lambda m: m != "id")
ids = st.integers(0, 2**32 - 1)


# --- parse_frame ------------------------------------------------------------------------------

@given(st.lists(st.tuples(ids, methods, params), min_size=1, max_size=5))
def test_any_object_commands_round_trip(commands: list[tuple[int, str, dict[str, Any]]]) -> None:
    frame = "\n".join(json.dumps({m: p, "id": i} if i else {m: p}) for i, m, p in commands)
    parsed = parse_frame(frame)
    assert parsed == [Command(i, m, p) for i, m, p in commands]


@given(ids, methods, params)
def test_the_id_may_come_first_or_last(cid: int, method: str, body: dict[str, Any]) -> None:
    first, last = json.dumps({"id": cid, method: body}), json.dumps({method: body, "id": cid})
    assert parse_frame(first) == parse_frame(last) == [Command(cid, method, body)]


def test_blank_lines_are_skipped_and_an_empty_object_is_a_pong() -> None:
    assert parse_frame('\n{}\n  \n{"send":{"data":1}}\n') == [Command(0, None, {}), Command(0, "send", {"data": 1})]
    assert parse_frame("") == []
    assert parse_frame('{"presence":null,"id":3}') == [Command(3, "presence", {})]


@given(st.text(max_size=40))
def test_text_that_is_not_json_lines_raises_protocol_error_only(text: str) -> None:
    try:
        expected_ok = all(isinstance(json.loads(line), dict) for line in text.split("\n") if line.strip())
    except ValueError:
        expected_ok = False
    try:
        parse_frame(text)
    except ProtocolError:
        return
    assert expected_ok, f"{text!r} parsed"


@given(st.lists(json_values, min_size=1, max_size=3))
def test_non_objects_and_garbage_raise_protocol_error(values: list[Any]) -> None:
    for value in values:
        if not isinstance(value, dict):
            with pytest.raises(ProtocolError):
                parse_frame(json.dumps(value))
        with pytest.raises(ProtocolError):
            parse_frame(json.dumps({"a": 1}) + "\n" + json.dumps(value)[:-1] + "\x00")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(constant: str) -> None:
    with pytest.raises(ProtocolError):
        parse_frame(f'{{"publish":{{"channel":"a","data":{constant}}},"id":1}}')
    with pytest.raises(ProtocolError):
        parse_frame(f'{{"publish":{{"channel":"a","data":{{"x":[1,{constant}]}}}},"id":1}}')


@pytest.mark.parametrize("frame", [
    '{"id":-1,"presence":{}}', '{"id":4294967296,"presence":{}}', '{"id":1.0,"presence":{}}',
    '{"id":"1","presence":{}}', '{"id":true,"presence":{}}', '{"presence":{},"history":{},"id":1}',
    '{"presence":[],"id":1}', '{"presence":"x","id":1}', '[]', '1', '"connect"', 'null',
    '{"connect":{}} {"connect":{}}',
])
def test_frames_centrifugo_refuses(frame: str) -> None:
    with pytest.raises(ProtocolError):
        parse_frame(frame)


def test_an_unknown_method_is_kept_for_the_caller() -> None:
    assert parse_frame('{"launch":{"x":1},"id":7}') == [Command(7, "launch", {"x": 1})]


# --- errors -----------------------------------------------------------------------------------

CENTRIFUGO = {  # centrifugal/centrifuge errors.go
    100: ("internal server error", True), 101: ("unauthorized", False), 102: ("unknown channel", False),
    103: ("permission denied", False), 104: ("method not found", False), 105: ("already subscribed", False),
    106: ("limit exceeded", False), 107: ("bad request", False), 108: ("not available", False),
    109: ("token expired", False), 110: ("expired", False), 111: ("too many requests", True),
    112: ("unrecoverable position", False),
}


@pytest.mark.parametrize("code", sorted(CENTRIFUGO))
def test_error_messages_and_temporary_flags_are_centrifugos(code: int) -> None:
    message, temporary = CENTRIFUGO[code]
    err = error(code)
    assert isinstance(err, ReplyError)
    assert (err.code, err.message, err.temporary) == (code, message, temporary)
    body = {"code": code, "message": message, **({"temporary": True} if temporary else {})}
    assert err.as_json() == body


def test_error_overrides() -> None:
    assert error(107, "bad request: why").as_json() == {"code": 107, "message": "bad request: why"}
    assert error(103, temporary=True).as_json() == {"code": 103, "message": "permission denied", "temporary": True}
    assert error(100, temporary=False).as_json() == {"code": 100, "message": "internal server error"}
    assert error(1234).code == 1234
    assert error(1234).message
    assert set(MESSAGES) == set(CENTRIFUGO)


# --- channel names ----------------------------------------------------------------------------

@given(st.text(min_size=1, max_size=60))
def test_check_channel(name: str) -> None:
    control = any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name)
    if control or len(name) > 30:
        with pytest.raises(ReplyError) as info:
            check_channel(name, 30)
        assert info.value.code == 107
    else:
        assert check_channel(name, 30) == name


@pytest.mark.parametrize("bad", ["", None, 5, ["a"], {"a": 1}, "a\tb", "\x00", "x\x9f"])
def test_check_channel_refuses(bad: object) -> None:
    with pytest.raises(ReplyError) as info:
        check_channel(bad, 255)
    assert info.value.code == 107
    assert info.value.message.startswith("bad request")


def test_check_channel_length_is_inclusive() -> None:
    assert check_channel("a" * 255, 255)
    with pytest.raises(ReplyError):
        check_channel("a" * 256, 255)


@pytest.mark.parametrize(("channel", "namespace"), [
    ("news", ""), ("news:sport", "news"), (":x", ""), ("a:b:c", "a"), ("dialog#1,2", ""), ("chat:dialog#1,2", "chat"),
])
def test_namespace_of(channel: str, namespace: str) -> None:
    assert namespace_of(channel) == namespace


@given(st.text(alphabet="abc:", max_size=10), st.text(alphabet="abc:", max_size=10))
def test_namespace_of_is_the_text_before_the_first_separator(head: str, tail: str) -> None:
    channel = head.replace(":", "") + ":" + tail
    assert namespace_of(channel) == head.replace(":", "")
    assert namespace_of(head.replace(":", "")) == ""


@pytest.mark.parametrize(("channel", "users"), [
    ("dialog#42,43", {"42", "43"}), ("news", None), ("chat:room#7", {"7"}), ("x#", set()), ("a#b#1,2", {"1", "2"}),
    ("x#,1,", {"1"}),
])
def test_user_limited(channel: str, users: set[str] | None) -> None:
    assert user_limited(channel) == (None if users is None else frozenset(users))


@pytest.mark.parametrize(("channel", "user", "allowed"), [
    ("dialog#42,43", "42", True), ("dialog#42,43", "43", True), ("dialog#42,43", "44", False),
    ("dialog#42,43", "", False), ("news", "", True), ("news", "9", True), ("x#", "", False), ("x#,", "", False),
    ("dialog#4", "42", False),
])
def test_allowed_users(channel: str, user: str, allowed: bool) -> None:
    assert allowed_users(channel, user) is allowed


@given(st.lists(st.text(alphabet="0123456789abc", min_size=1, max_size=4), min_size=1, max_size=4),
       st.text(alphabet="0123456789abc", max_size=4))
def test_allowed_users_property(users: list[str], user: str) -> None:
    assert allowed_users("dialog#" + ",".join(users), user) is (bool(user) and user in users)


# --- hub.numbered_parts -----------------------------------------------------------------------

keys = st.text(max_size=8)
long_keys = st.text(min_size=60, max_size=80)
events = st.dictionaries(keys, json_values, max_size=4)


def _json_text(head: bytes) -> bytes:
    """The JSON text of a numbered payload's head: without its ``t`` or ``n``+length marker."""
    if head[:1] == b"n":
        assert head[1] == len(head) - 2, head
        return head[2:]
    assert head == b't{"id":', head
    return head[1:]


def _nested(event: dict[str, Any], path: list[str], inner: list[dict[str, Any]]) -> dict[str, Any]:
    """``event`` with an object at each key of ``path`` but the last (taken from ``inner``)."""
    out = dict(event)
    node = out
    for key, extra in zip(path[:-1], inner, strict=False):
        child = dict(extra)
        node[key] = child
        node = child
    return out


@settings(max_examples=100)
@given(events, st.lists(keys | long_keys, min_size=1, max_size=5), st.lists(events, min_size=4, max_size=4),
       st.integers(0, 2**63))
def test_numbered_parts_put_the_number_at_the_key_path(event: dict[str, Any], path: list[str],
                                                        inner: list[dict[str, Any]], n: int) -> None:
    event = _nested(event, path, inner)
    if path != ["id"] and len("".join("{" + json.dumps(k, ensure_ascii=False) + ":" for k in path).encode()) > 255:
        with pytest.raises(ValueError, match="too long"):
            numbered_parts(event, tuple(path))
        return
    head, tail = numbered_parts(event, tuple(path))
    decoded = json.loads(_json_text(head) + str(n).encode() + tail)
    node = decoded
    for key in path[:-1]:
        node = node[key]
    assert node[path[-1]] == n
    # Everything else is the event as it was.
    expected = json.loads(json.dumps(event))
    target = expected
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = n
    assert decoded == expected
    if path == ["id"]:
        assert head == b't{"id":'


def test_numbered_parts_refuses_a_path_through_a_non_object() -> None:
    with pytest.raises(ValueError, match="needs an object at 'pub'"):
        numbered_parts({"push": {"pub": 5}}, ("push", "pub", "offset"))
    with pytest.raises(ValueError, match="not JSON compliant"):
        numbered_parts({"push": {"pub": {"data": math.nan}}}, ("push", "pub", "offset"))


def test_numbered_parts_of_a_channels_publication() -> None:
    head, tail = numbered_parts({"push": {"channel": "c", "pub": {"data": {"a": 1}}}}, ("push", "pub", "offset"))
    assert _json_text(head) + b"17" + tail == b'{"push":{"pub":{"offset":17,"data":{"a":1}},"channel":"c"}}'
