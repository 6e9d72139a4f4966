"""Property-based tests (Hypothesis) of the config loader: whatever text it is given,
``parse_config`` returns Settings or raises ConfigError, never anything else, and every
problem it reports is located inside the text it was given.

Three kinds of input: arbitrary text (unicode, control characters, YAML punctuation,
huge numbers), deep nesting, and YAML documents dumped from plausible config mappings
whose values are valid, invalid, or of the wrong type. A document the loader accepts is
described (as ``wsgate routes`` does) and survives a dump and reload unchanged.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wsgate import ConfigError
from wsgate.config import Registry, Settings, parse_config
from wsgate.describe import describe_routes

FILE = "cfg/config.yaml"
# One registry for every example: a fresh one re-reads every installed package's entry
# points, which is most of a parse's time. It only caches handler classes it resolved.
REGISTRY = Registry()
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# The line breaks YAML counts (YAML 1.1, which PyYAML implements).
_YAML_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


class _Protocol:
    _reading_paused = False


_QUEUE = WebSocketDataQueue(_Protocol(), 2**16, loop=None)  # type: ignore[arg-type]


@pytest.fixture(autouse=True, scope="module")
def _no_env_overrides() -> Iterator[None]:
    """WSGATE_BROKER and WSGATE_API_TOKEN change what the loader sees; keep them out."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WSGATE_BROKER", raising=False)
        mp.delenv("WSGATE_API_TOKEN", raising=False)
        yield


# --- the oracle ------------------------------------------------------------------------------


def load(text: str, file: str = FILE) -> Settings | ConfigError:
    """Settings, or the ConfigError after checking every problem in it.

    Anything else propagates and fails the property: that is the traceback the
    loader must never produce.
    """
    try:
        result = parse_config(text, file, REGISTRY)
    except ConfigError as exc:
        check_problems(exc, text, file)
        return exc
    assert isinstance(result, Settings), type(result)
    return result


def check_problems(exc: ConfigError, text: str, file: str) -> None:
    lines = _YAML_BREAK.split(text)
    assert exc.problems, "ConfigError without problems"
    assert str(exc) == "\n".join(str(p) for p in exc.problems)
    for problem in exc.problems:
        assert problem.file == file, problem
        assert isinstance(problem.key, str), problem
        assert isinstance(problem.message, str), problem
        assert problem.message.strip(), f"empty message: {problem!r}"
        assert 1 <= problem.line <= len(lines) + 1, f"line outside the text ({len(lines)} lines): {problem!r}"
        line_text = lines[problem.line - 1] if problem.line <= len(lines) else ""
        assert 1 <= problem.column <= len(line_text) + 1, f"column outside line {line_text!r}: {problem!r}"
        assert str(problem).startswith(f"{file}:{problem.line}:{problem.column}: "), str(problem)


def check_accepted(settings_: Settings, text: str) -> None:
    """A config that loads is described without error and survives a dump and reload."""
    routes = describe_routes(settings_)
    assert isinstance(routes, str)
    for endpoint in settings_.endpoints:
        assert endpoint.path in routes
    # Durations are seconds a timer will be armed with: the loader must not let NaN or
    # infinity through (``heartbeat.interval: .inf`` breaks every connection at runtime).
    config = settings_.config
    durations = [config.server.shutdown_timeout, config.server.handshake_timeout]
    for endpoint in settings_.endpoints:
        p = endpoint.policy
        durations += [p.heartbeat.interval, p.heartbeat.timeout, p.idle_timeout, p.close_timeout]
        if p.rate_limit is not None:
            durations.append(p.rate_limit.per)
    for seconds in durations:
        assert math.isfinite(seconds), f"accepted duration {seconds!r} in:\n{text}"
        assert seconds >= 0, f"accepted duration {seconds!r} in:\n{text}"
    # Every handshake builds aiohttp's frame reader with max_message_size + 1 (see
    # gateway/router.py): a size the loader accepts must be one that reader takes.
    for endpoint in settings_.endpoints:
        limit = endpoint.policy.max_message_size + 1
        try:
            WebSocketReader(_QUEUE, limit, compress=endpoint.policy.compression, decode_text=True)
        except (OverflowError, ValueError) as exc:
            raise AssertionError(f"max_message_size {limit - 1} accepted but unusable ({exc}):\n{text}") from exc
    # Round trip: what was accepted, written back as YAML, loads to the same config.
    dumped = yaml.safe_dump(config.model_dump(mode="json", exclude_unset=True), sort_keys=False)
    again = load(dumped, "roundtrip.yaml")
    assert isinstance(again, Settings), f"{again}\n--- dumped from ---\n{text}\n--- as ---\n{dumped}"
    assert _canonical(again.config.model_dump(mode="json")) == _canonical(config.model_dump(mode="json"))
    assert [e.path for e in again.endpoints] == [e.path for e in settings_.endpoints]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)  # NaN == NaN as text


# --- (a) arbitrary text ----------------------------------------------------------------------

_TOKENS = [
    "endpoints", "server", "policy", "path", "handler", "echo", "chat", "options", "/ws", "/chat",
    "heartbeat", "interval", "max_message_size", "origins", "port", "1MiB", "5s", "-1", "1e400",
    "1.0e+400", ".inf", ".nan", "~", "null", "true", "0x1F", "0o17", "1_000", "2001-12-14", "2020-13-45",
    "9" * 400, ":", ": ", "- ", "-", "{", "}", "[", "]", ",", "\n", "\r\n", "\r", "  ", "\t", "#", "&a ",
    "*a", "!!binary ", "!!str ", "!!int ", "!!timestamp ", "!!set ", "!!python/name:os.system ", "!x ",
    "<<: ", "? ", "|", ">", "'", '"', "\\", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "---", "...",
    "\x00", "\x07", "\x85", "\u2028", "\ufeff", "\ud800", "\U0001f600", "é",
]

arbitrary_text = st.one_of(
    st.text(),
    st.text(st.characters(codec=None, exclude_categories=())),  # surrogates and controls too
    st.lists(st.sampled_from(_TOKENS) | st.text(max_size=3), max_size=40).map("".join),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10) | st.binary(max_size=10),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.integers(), inner,
                                                                     max_size=4),
        max_leaves=20,
    ).map(lambda v: yaml.dump(v, default_flow_style=None)),
)


@PROPERTY
@given(text=arbitrary_text)
@example(text="\x00")
@example(text="\x1f")
@example(text="2020-13-45")
@example(text="!!int ")
@example(text="!!timestamp ")
@example(text="server: {shutdown_timeout: 1" + "0" * 309 + "}")
@example(text="a: !!timestamp 2020-13-45")
@example(text="endpoints:\n- {path: /ws, handler: chat, options: {history: " + "9" * 5000 + "}}")
@example(text="endpoints:\n- {path: /ws, handler: echo, max_message_size: '" + "9" * 400 + "'}")
def test_arbitrary_text_is_settings_or_a_located_config_error(text: str) -> None:
    result = load(text)
    if isinstance(result, Settings):
        check_accepted(result, text)


@PROPERTY
@given(text=arbitrary_text, file=st.text(min_size=1, max_size=20).filter(lambda f: "\n" not in f))
def test_problems_name_the_file_they_were_given(text: str, file: str) -> None:
    load(text, file)


# --- deep nesting ----------------------------------------------------------------------------

def _nested(kind: str, depth: int) -> str:
    if kind == "flow-list":
        return "endpoints: " + "[" * depth + "]" * depth + "\n"
    if kind == "flow-map":
        return "endpoints: " + "{a: " * depth + "1" + "}" * depth + "\n"
    if kind == "block-map":
        return "endpoints:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(depth))
    # block sequences
    return "endpoints:\n" + "".join(" " * (2 * i) + "- \n" for i in range(depth))


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(["flow-list", "flow-map", "block-map", "block-list"]), depth=st.integers(1, 1000))
@example(kind="flow-list", depth=1000)
def test_deep_nesting_is_a_config_error(kind: str, depth: int) -> None:
    """A thousand levels is absurd, but it must get a clean error, not a RecursionError."""
    result = load(_nested(kind, depth))
    assert isinstance(result, ConfigError)


# --- (c) structured documents ----------------------------------------------------------------

wrong_type = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(), st.text(max_size=8),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)

durations = st.one_of(
    st.integers(0, 10**6), st.floats(0, 1e6),
    st.from_regex(r"\A\d{1,4}(\.\d{1,3})?(ms|s|m|h)?\Z"),
    st.sampled_from(["5s", "500ms", "2m", "1h", "0", " 20s ", "5 s"]),
    # invalid ones
    st.sampled_from(["-1", -1, -0.5, "1e400", "1e3s", True, False, None, "abc", "", "5x", "s", "9" * 400 + "s",
                     float("inf"), float("-inf"), float("nan"), 10**400, "\u0665s"]),
    wrong_type,
)

sizes = st.one_of(
    st.integers(1, 2**40),
    st.from_regex(r"\A\d{1,5}(\.\d{1,2})?(B|KB|KiB|MB|MiB|GB|GiB)?\Z"),
    st.sampled_from(["512B", "64KiB", "1MiB", "1MB", "1.5KiB"]),
    st.sampled_from([0, -1, "0", "-1", "1e400", True, None, 1.5, "9" * 400, "9" * 400 + "GiB", "1TiB", 10**400,
                     "0.4B", float("inf")]),
    wrong_type,
)

origin_items = st.sampled_from([
    "https://app.example.com", "http://localhost:*", "http://[::1]:8080", "https://x.example:443", "ws://a",
    "ftp://x", "", "*", "http://a:99999", "https://x.y/path", "https://*.example.com", "http://[::1",
    "http://user@host", "https://ÉXAMPLE.com", "http://a:*:*",
]) | st.text(max_size=12)
origins = st.one_of(st.sampled_from(["same-origin", "*", "other"]), st.lists(origin_items, max_size=4), wrong_type)

positive_int = st.one_of(st.integers(-3, 10**6), st.just(10**40), wrong_type)

heartbeat = st.one_of(
    st.fixed_dictionaries({}, optional={"interval": durations, "timeout": durations}),
    st.dictionaries(st.sampled_from(["interval", "timeout", "every"]), durations, max_size=3),
    wrong_type,
)
rate_limit = st.one_of(
    st.none(),
    st.fixed_dictionaries({"messages": positive_int}, optional={"per": durations, "burst": positive_int}),
    st.dictionaries(st.sampled_from(["messages", "per", "burst", "rate"]), positive_int, max_size=3),
    wrong_type,
)

POLICY_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "origins": origins,
    "allow_missing_origin": st.booleans() | wrong_type,
    "heartbeat": heartbeat,
    "idle_timeout": durations,
    "max_message_size": sizes,
    "send_queue": sizes,
    "slow_client": st.sampled_from(["close", "drop", "block"]) | wrong_type,
    "max_connections": positive_int,
    "max_connections_per_ip": positive_int,
    "rate_limit": rate_limit,
    "subprotocols": st.lists(st.sampled_from(["chat.v1", "json", ""]) | st.text(max_size=6), max_size=3) | wrong_type,
    "compression": st.booleans() | wrong_type,
    "close_timeout": durations,
}

unknown_keys = st.dictionaries(st.sampled_from(["colour", "hearbeat", "Path", "extra", "1", ""]), wrong_type,
                               max_size=2)


def policy_block(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={k: POLICY_VALUES[k] for k in keys})


ALL_POLICY = list(POLICY_VALUES)

paths = st.one_of(
    st.sampled_from(["/ws", "/chat", "/a/b", "/x-1", "/%20", "/"]),
    st.sampled_from(["/healthz", "/readyz", "/metrics", "/static/x", "/api/publish", "ws", "", "/a b", "/é"]),
    st.text(max_size=8), wrong_type,
)
# Only names and references whose import is harmless (no module with side effects).
handlers = st.one_of(
    st.sampled_from(["echo", "chat", "wsgate.builtins.echo:Echo", "wsgate.builtins.chat:Chat"]),
    st.sampled_from(["nope", "", ":", "x:", ":X", ".rel:X", "wsgate.builtins.echo:Nope", "wsgate.errors:ConfigError",
                     "no_such_module_xyz:Handler", "wsgate.config:Registry"]),
    wrong_type,
)
chat_options = st.fixed_dictionaries({}, optional={
    "history": positive_int, "max_text": positive_int,
    "default_room": st.sampled_from(["lobby", "", "a" * 80, "bad room"]) | wrong_type,
    "max_rooms": positive_int, "colour": wrong_type,
})
options = st.one_of(st.just({}), chat_options, st.dictionaries(st.text(max_size=5), wrong_type, max_size=2), wrong_type)


@st.composite
def endpoint(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 19)) == 0:
        return draw(wrong_type)
    entry: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        entry["path"] = draw(paths)
    if draw(st.integers(0, 9)):
        entry["handler"] = draw(handlers)
    if draw(st.booleans()):
        entry["options"] = draw(options)
    entry.update(draw(policy_block(ALL_POLICY)))
    entry.update(draw(unknown_keys))
    return entry


server = st.fixed_dictionaries({}, optional={
    "host": st.sampled_from(["127.0.0.1", "::1", "0.0.0.0", "localhost", ""]) | wrong_type,
    "port": st.one_of(st.integers(-1, 70000), st.just(10**30), wrong_type),
    "workers": st.integers(0, 3) | wrong_type,
    "shutdown_timeout": durations,
    "handshake_timeout": durations,
    "max_connections": positive_int,
    "trusted_proxies": st.lists(st.sampled_from(["127.0.0.1/32", "::1/128", "10.0.0.0/8", "1.2.3.4/99", "10.0.0.1/8",
                                                 "abc", "", "fe80::/10"]) | wrong_type, max_size=3) | wrong_type,
    "allowed_hosts": st.lists(st.sampled_from(["example.com", ".example.com", "localhost:8080", "*", "", "a b"]),
                              max_size=3) | wrong_type,
    "hots": wrong_type,
})


@st.composite
def config_document(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if draw(st.booleans()):
        doc["server"] = draw(server | wrong_type)
    if draw(st.booleans()):
        doc["policy"] = draw(policy_block(ALL_POLICY) | wrong_type)
    if draw(st.integers(0, 9)):
        doc["endpoints"] = draw(st.lists(endpoint(), max_size=4) | wrong_type)
    if draw(st.booleans()):
        doc["broker"] = draw(st.sampled_from(["memory", "redis://127.0.0.1:6379/0", "unix:///tmp/r.sock", "nope"])
                             | wrong_type)
    if draw(st.booleans()):
        doc["api"] = draw(st.fixed_dictionaries({}, optional={"token": st.text(max_size=8) | wrong_type,
                                                              "secret": wrong_type}) | wrong_type)
    if draw(st.booleans()):
        doc["logging"] = draw(st.fixed_dictionaries({}, optional={
            "level": st.sampled_from(["debug", "info", "warning", "error", "trace"]) | wrong_type,
            "format": st.sampled_from(["text", "json", "xml"]) | wrong_type,
        }) | wrong_type)
    doc.update(draw(st.dictionaries(st.sampled_from(["endpoint", "servers", "polcy"]), wrong_type, max_size=1)))
    return doc


def _dump(doc: dict[str, Any], flow: bool | None, unicode: bool) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=flow, allow_unicode=unicode)


@PROPERTY
@given(doc=config_document(), flow=st.sampled_from([None, True, False]), unicode=st.booleans())
@example(doc={"endpoints": [{"path": "/ws", "handler": "echo", "heartbeat": {"interval": float("inf")}}]},
         flow=False, unicode=False)
@example(doc={"endpoints": [{"path": "/ws", "handler": "echo", "idle_timeout": float("nan")}]},
         flow=False, unicode=False)
@example(doc={"endpoints": [{"path": "/ws", "handler": "echo", "max_message_size": "4GiB"}]},
         flow=False, unicode=False)
def test_structured_documents(doc: dict[str, Any], flow: bool | None, unicode: bool) -> None:
    text = _dump(doc, flow, unicode)
    result = load(text)
    if isinstance(result, Settings):
        check_accepted(result, text)


@st.composite
def valid_document(draw: st.DrawFn) -> dict[str, Any]:
    """Documents built only from values the README allows: they must all load."""
    good_duration = st.one_of(st.integers(0, 3600), st.floats(0, 3600).map(lambda f: round(f, 3)),
                              st.from_regex(r"\A[1-9][0-9]{0,2}(ms|s|m|h)\Z"))
    # max_message_size is at most 1 GiB (aiohttp's frame reader counts in 32 bits)
    good_size = st.one_of(st.integers(1, 2**30), st.from_regex(r"\A[1-9][0-9]{0,2}(B|KB|KiB|MB|MiB)\Z"))
    good_policy = st.fixed_dictionaries({}, optional={
        "origins": st.sampled_from(["same-origin", "*"])
        | st.lists(st.sampled_from(["https://app.example.com", "http://localhost:*", "http://[::1]:8080"]),
                   max_size=3),
        "allow_missing_origin": st.booleans(),
        "heartbeat": st.fixed_dictionaries({}, optional={"interval": good_duration, "timeout": good_duration}),
        "idle_timeout": good_duration,
        "max_message_size": good_size,
        "send_queue": good_size,
        "slow_client": st.sampled_from(["close", "drop"]),
        "max_connections": st.none() | st.integers(1, 10**6),
        "max_connections_per_ip": st.none() | st.integers(1, 10**6),
        "rate_limit": st.none() | st.fixed_dictionaries(
            {"messages": st.integers(1, 1000)},
            optional={"per": st.integers(1, 60), "burst": st.integers(1, 1000)}),
        "subprotocols": st.lists(st.sampled_from(["chat.v1", "json"]), max_size=2, unique=True),
        "compression": st.booleans(),
        "close_timeout": good_duration,
    })
    count = draw(st.integers(1, 3))
    names = draw(st.lists(st.from_regex(r"\A/[a-z][a-z0-9_-]{0,8}\Z"), min_size=count, max_size=count, unique=True))
    endpoints = []
    for path in names:
        handler = draw(st.sampled_from(["echo", "chat", "wsgate.builtins.echo:Echo"]))
        entry: dict[str, Any] = {"path": path, "handler": handler}
        if draw(st.booleans()):
            entry.update(draw(good_policy))
        if handler == "chat":
            entry["options"] = draw(st.fixed_dictionaries({}, optional={
                "history": st.integers(0, 500), "max_text": st.integers(1, 10000),
                "default_room": st.sampled_from(["lobby", "room-1"])}))
        endpoints.append(entry)
    doc: dict[str, Any] = {
        "server": draw(st.fixed_dictionaries({}, optional={
            "host": st.sampled_from(["127.0.0.1", "::1"]), "port": st.integers(0, 65535),
            "shutdown_timeout": good_duration, "handshake_timeout": good_duration,
            "trusted_proxies": st.lists(st.sampled_from(["127.0.0.1/32", "10.0.0.0/8", "::1/128"]), max_size=2)})),
        "policy": draw(good_policy),
        "endpoints": endpoints,
    }
    return doc


@PROPERTY
@given(doc=valid_document(), flow=st.sampled_from([None, True, False]))
def test_valid_documents_load_describe_and_round_trip(doc: dict[str, Any], flow: bool | None) -> None:
    text = _dump(doc, flow, True)
    result = load(text)
    assert isinstance(result, Settings), f"{result}\n--- for ---\n{text}"
    check_accepted(result, text)
    assert [e.path for e in result.endpoints] == [e["path"] for e in doc["endpoints"]]
