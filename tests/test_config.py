"""config.yaml validation: every error located as FILE:LINE:COL: dotted.key: message; precedence;
env overrides; the ``check`` and ``schema`` commands."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import pytest
import yaml

from wsgate import ConfigError, ConfigProblem, Connection, Handler, Message
from wsgate.config import Registry, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config.yaml"
PROBLEM_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<rest>.+)$")


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WSGATE_BROKER", raising=False)
    monkeypatch.delenv("WSGATE_API_TOKEN", raising=False)


def problems_of(text: str, registry: Registry | None = None) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.yaml", registry or Registry())
    found = info.value.problems
    assert found, "ConfigError without problems"
    # str(ConfigError) is one FILE:LINE:COL line per problem
    lines = str(info.value).splitlines()
    assert lines == [str(p) for p in found]
    for line in lines:
        assert PROBLEM_LINE.match(line), line
    return found


def one_problem(text: str, registry: Registry | None = None) -> ConfigProblem:
    found = problems_of(text, registry)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def assert_problem(problem: ConfigProblem, line: int, column: int, key: str, *fragments: str) -> None:
    assert (problem.file, problem.line, problem.column, problem.key) == ("config.yaml", line, column, key), str(problem)
    text = str(problem)
    assert text.startswith(f"config.yaml:{line}:{column}: {key}: " if key else f"config.yaml:{line}:{column}: ")
    for fragment in fragments:
        assert fragment in problem.message, f"{fragment!r} not in {problem.message!r}"


def ok(text: str, registry: Registry | None = None) -> Any:
    return parse_config(text, "config.yaml", registry or Registry())


# --- YAML itself -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("server:\n  host: 127.0.0.1: 8080\nendpoints:\n  - {path: /ws, handler: echo}\n", 2, 18),
        ("endpoints:\n  - {path: /ws, handler: echo\nlogging: {level: info}\n", 3, 8),
        ("endpoints:\n  - path: /ws\n   handler: echo\n", 3, 4),
        ("endpoints:\n\t- path: /ws\n", 2, 1),
    ],
)
def test_yaml_syntax_error_is_located(text: str, line: int, column: int) -> None:
    assert_problem(one_problem(text), line, column, "", "YAML syntax error")


def test_duplicate_yaml_key_points_at_the_second_one() -> None:
    text = "endpoints:\n  - path: /ws\n    handler: echo\n    path: /other\n"
    assert_problem(one_problem(text), 4, 5, "endpoints[0].path", "appears twice")


def test_duplicate_top_level_key() -> None:
    text = "server: {port: 1}\nendpoints:\n  - {path: /ws, handler: echo}\nserver: {port: 2}\n"
    assert_problem(one_problem(text), 4, 1, "server", "appears twice")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "- a\n- b\n", "just a string\n", "42\n", "null\n"])
def test_empty_file_or_not_a_mapping(text: str) -> None:
    assert_problem(one_problem(text), 1, 1, "", "must be a mapping", "endpoints")


def test_missing_endpoints() -> None:
    assert_problem(one_problem("server: {port: 1}\n"), 1, 1, "endpoints", "required")


def test_empty_endpoints_list() -> None:
    assert_problem(one_problem("server: {port: 1}\nendpoints: []\n"), 2, 1, "endpoints", "at least 1")


# --- unknown keys, types, values --------------------------------------------------------------


def test_unknown_top_level_key_lists_allowed_keys() -> None:
    text = "endpoints:\n  - {path: /ws, handler: echo}\nlogging: {level: info}\nmetrics: true\n"
    assert_problem(one_problem(text), 4, 1, "metrics", "unknown key",
                   "allowed keys: server, auth, policy, endpoints, broker, api, logging")


def test_unknown_server_key_lists_allowed_keys() -> None:
    text = "server:\n  host: 127.0.0.1\n  prot: 80\nendpoints:\n  - {path: /ws, handler: echo}\n"
    problem = one_problem(text)
    assert_problem(problem, 3, 3, "server.prot", "unknown key", "allowed keys:", "host", "port", "workers")


def test_unknown_key_two_levels_down() -> None:
    text = "policy:\n  heartbeat:\n    intervall: 5s\nendpoints:\n  - {path: /ws, handler: echo}\n"
    assert_problem(one_problem(text), 3, 5, "policy.heartbeat.intervall", "allowed keys: interval, timeout")


def test_unknown_endpoint_key_lists_policy_and_endpoint_keys() -> None:
    text = "endpoints:\n  - {path: /ws, handler: echo}\n  - path: /x\n    handler: echo\n    hartbeat: 1\n"
    problem = one_problem(text)
    assert_problem(problem, 5, 5, "endpoints[1].hartbeat", "unknown key", "allowed keys:")
    for key in ("path", "handler", "options", "heartbeat", "origins", "rate_limit"):
        assert re.search(rf"\b{key}\b", problem.message), key


@pytest.mark.parametrize(
    ("text", "line", "column", "key", "fragment"),
    [
        ("server:\n  port: eighty\nendpoints:\n  - {path: /ws, handler: echo}\n", 2, 3, "server.port", "integer"),
        ("server: {port: 70000}\nendpoints:\n  - {path: /ws, handler: echo}\n", 1, 10, "server.port", "65535"),
        ("server: 5\nendpoints:\n  - {path: /ws, handler: echo}\n", 1, 1, "server", "dictionary"),
        ("endpoints: /ws\n", 1, 1, "endpoints", "list"),
        ("endpoints:\n  - /ws\n", 2, 5, "endpoints[0]", "dictionary"),
        ("endpoints:\n  - {path: /ws}\n", 2, 5, "endpoints[0].handler", "required"),
        ("endpoints:\n  - {handler: echo}\n", 2, 5, "endpoints[0].path", "required"),
        ("endpoints:\n  - path: /ws\n    handler: echo\n    compression: maybe\n", 4, 5,
         "endpoints[0].compression", "boolean"),
        ("policy:\n  slow_client: block\nendpoints:\n  - {path: /ws, handler: echo}\n", 2, 3,
         "policy.slow_client", "'close' or 'drop'"),
        ("logging:\n  level: loud\nendpoints:\n  - {path: /ws, handler: echo}\n", 2, 3, "logging.level", "debug"),
        ("broker: mysql://db\nendpoints:\n  - {path: /ws, handler: echo}\n", 1, 1, "broker", "Redis URL"),
        ("policy:\n  max_connections: 0\nendpoints:\n  - {path: /ws, handler: echo}\n", 2, 3,
         "policy.max_connections", "greater than 0"),
        ("policy:\n  rate_limit: {messages: 0}\nendpoints:\n  - {path: /ws, handler: echo}\n", 2, 16,
         "policy.rate_limit.messages", "greater than 0"),
    ],
)
def test_wrong_type_or_value(text: str, line: int, column: int, key: str, fragment: str) -> None:
    assert_problem(one_problem(text), line, column, key, fragment)


@pytest.mark.parametrize(
    ("text", "line", "column", "key", "fragment"),
    [
        ("policy:\n  idle_timeout: 5 minutes\nendpoints:\n  - {path: /ws, handler: echo}\n", 2, 3,
         "policy.idle_timeout", "expected a duration"),
        ("policy:\n  heartbeat: {interval: soon}\nendpoints:\n  - {path: /ws, handler: echo}\n", 2, 15,
         "policy.heartbeat.interval", "expected a duration"),
        ("policy:\n  idle_timeout: -5\nendpoints:\n  - {path: /ws, handler: echo}\n", 2, 3,
         "policy.idle_timeout", "negative"),
        ("server:\n  shutdown_timeout: yes\nendpoints:\n  - {path: /ws, handler: echo}\n", 2, 3,
         "server.shutdown_timeout", "boolean"),
        ("endpoints:\n  - path: /ws\n    handler: echo\n    heartbeat:\n      timeout: 1 hour\n", 5, 7,
         "endpoints[0].heartbeat.timeout", "expected a duration"),
        ("policy:\n  max_message_size: 1 lot\nendpoints:\n  - {path: /ws, handler: echo}\n", 2, 3,
         "policy.max_message_size", "expected a size"),
        ("policy:\n  send_queue: 0\nendpoints:\n  - {path: /ws, handler: echo}\n", 2, 3,
         "policy.send_queue", "greater than 0"),
    ],
)
def test_bad_duration_or_size(text: str, line: int, column: int, key: str, fragment: str) -> None:
    assert_problem(one_problem(text), line, column, key, fragment)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("max_message_size", "1 lot", "expected a size"),
        ("send_queue", "lots", "expected a size"),
        ("idle_timeout", "5 minutes", "expected a duration"),
        ("close_timeout", "soon", "expected a duration"),
    ],
)
def test_bad_duration_or_size_on_an_endpoint_says_what_is_expected(key: str, value: str, fragment: str) -> None:
    text = f"endpoints:\n  - path: /ws\n    handler: echo\n    {key}: {value}\n"
    assert_problem(one_problem(text), 4, 5, f"endpoints[0].{key}", fragment)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("idle_timeout", "5s", 5.0),
        ("idle_timeout", "500ms", 0.5),
        ("close_timeout", "2m", 120.0),
        ("max_message_size", "64KiB", 65536),
        ("send_queue", "1MiB", 1 << 20),
        ("max_message_size", "1KB", 1000),
    ],
)
def test_endpoint_overrides_accept_human_durations_and_sizes(key: str, value: str, expected: float) -> None:
    """The README: "An endpoint entry may set any of them directly" — in the same units as ``policy:``."""
    settings = ok(f"endpoints:\n  - path: /ws\n    handler: echo\n    {key}: {value}\n")
    assert getattr(settings.endpoints[0].policy, key) == expected


def test_rate_limit_per_zero_is_refused() -> None:
    """``per: 0`` would divide by zero when a client connects; it must fail at load time."""
    text = "policy:\n  rate_limit: {messages: 5, per: 0}\nendpoints:\n  - {path: /ws, handler: echo}\n"
    problem = one_problem(text)
    assert problem.key == "policy.rate_limit.per"
    assert problem.line == 2


@pytest.mark.parametrize(
    ("text", "line", "column", "key"),
    [
        ("policy:\n  origins: [https://ok.example, example.com]\nendpoints:\n  - {path: /ws, handler: echo}\n",
         2, 3, "policy.origins"),
        ("policy:\n  origins: anywhere\nendpoints:\n  - {path: /ws, handler: echo}\n", 2, 3, "policy.origins"),
        ("endpoints:\n  - path: /ws\n    handler: echo\n    origins: ['https://ok.example', 'ftp://x']\n",
         4, 5, "endpoints[0].origins"),
    ],
)
def test_bad_origin(text: str, line: int, column: int, key: str) -> None:
    problem = one_problem(text)
    assert_problem(problem, line, column, key)
    assert "origin" in problem.message
    assert "https://app.example.com" in problem.message  # shows an example of the right form


def test_bad_trusted_proxy_network_is_located() -> None:
    text = "server:\n  trusted_proxies: [10.0.0.0/8, nope]\nendpoints:\n  - {path: /ws, handler: echo}\n"
    found = problems_of(text)
    assert {p.key for p in found} == {"server.trusted_proxies[1]"}
    assert all(p.line == 2 for p in found)


# --- paths -----------------------------------------------------------------------------------


def test_duplicate_path_points_at_the_second_one() -> None:
    text = (
        "endpoints:\n"
        "  - path: /ws\n"
        "    handler: echo\n"
        "  - path: /chat\n"
        "    handler: chat\n"
        "  - handler: chat\n"
        "    path: /ws\n"
    )
    assert_problem(one_problem(text), 7, 5, "endpoints[2].path", "duplicate path '/ws'", "endpoints[0]")


@pytest.mark.parametrize(
    "path", ["/metrics", "/healthz", "/readyz", "/", "/static/x", "/static/", "/api/publish", "/api/x"]
)
def test_reserved_paths(path: str) -> None:
    text = f"endpoints:\n  - {{path: /ok, handler: echo}}\n  - path: '{path}'\n    handler: echo\n"
    assert_problem(one_problem(text), 3, 5, "endpoints[1].path", "used by wsgate itself", "choose another path")


@pytest.mark.parametrize("path", ["ws", "chat/room", "", "/a b", "http://x/ws"])
def test_path_must_be_a_url_path(path: str) -> None:
    text = f"endpoints:\n  - path: '{path}'\n    handler: echo\n"
    assert_problem(one_problem(text), 2, 5, "endpoints[0].path", "must start with '/'")


@pytest.mark.parametrize("path", ["/ws", "/a/b", "/chat-v2", "/x.y", "/staticx", "/metrics2", "/apis"])
def test_ordinary_paths_are_fine(path: str) -> None:
    assert ok(f"endpoints:\n  - {{path: '{path}', handler: echo}}\n").endpoints[0].path == path


# --- handlers --------------------------------------------------------------------------------


def test_unknown_handler_lists_known_handlers() -> None:
    text = "endpoints:\n  - path: /ws\n    handler: ecko\n"
    problem = one_problem(text)
    assert_problem(problem, 3, 5, "endpoints[0].handler", "unknown handler 'ecko'",
                   "known handlers: channels, chat, echo", "module.path:ClassName")


@pytest.mark.parametrize(
    ("ref", "fragments"),
    [
        ("no_such_module_wsgate_test:Foo", ("cannot import module 'no_such_module_wsgate_test'",)),
        ("json:JSONDecoder", ("'json:JSONDecoder' is not a subclass of wsgate.Handler",)),
        ("json:loads", ("not a subclass of wsgate.Handler",)),
        ("json:NoSuchThing", ("has no attribute 'NoSuchThing'",)),
        (".handlers.echo:Echo", ("absolute module path",)),
        ("..x:Y", ("absolute module path",)),
        ("json:", ("is not a handler reference",)),
        (":Echo", ("is not a handler reference",)),
    ],
)
def test_bad_module_class_reference(ref: str, fragments: tuple[str, ...]) -> None:
    text = f"endpoints:\n  - path: /ws\n    handler: '{ref}'\n"
    assert_problem(one_problem(text), 3, 5, "endpoints[0].handler", *fragments)


def test_module_class_reference_resolves() -> None:
    settings = ok("endpoints:\n  - {path: /ws, handler: 'wsgate.builtins.echo:Echo'}\n")
    assert settings.endpoints[0].handler_cls.__name__ == "Echo"


def _module(tmp_path: Path, body: str) -> str:
    name = f"wsgate_cfgtest_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(body)
    return name


def test_handler_module_next_to_the_config_file(tmp_path: Path) -> None:
    name = _module(tmp_path, (
        "from wsgate import Handler\n"
        "class Good(Handler):\n    pass\n"
        "class NotOne:\n    pass\n"
    ))
    config = tmp_path / "config.yaml"
    config.write_text(f"endpoints:\n  - {{path: /good, handler: '{name}:Good'}}\n")
    assert load_config(config, Registry()).endpoints[0].handler_cls.__name__ == "Good"
    config.write_text(f"endpoints:\n  - path: /bad\n    handler: '{name}:NotOne'\n")
    with pytest.raises(ConfigError) as info:
        load_config(config, Registry())
    [problem] = info.value.problems
    assert (problem.file, problem.line, problem.column, problem.key) == (str(config), 3, 5, "endpoints[0].handler")
    assert "not a subclass of wsgate.Handler" in problem.message


def test_handler_module_that_raises_on_import(tmp_path: Path) -> None:
    name = _module(tmp_path, "raise RuntimeError('boom at import')\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"endpoints:\n  - path: /x\n    handler: '{name}:X'\n")
    with pytest.raises(ConfigError) as info:
        load_config(config, Registry())
    [problem] = info.value.problems
    assert problem.key == "endpoints[0].handler"
    assert "RuntimeError: boom at import" in problem.message


def test_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml", Registry())
    [problem] = info.value.problems
    assert problem.file.endswith("missing.yaml")
    assert "cannot read the config file" in problem.message


def test_bad_handler_option_is_located() -> None:
    text = (
        "endpoints:\n"
        "  - {path: /ws, handler: echo}\n"
        "  - path: /chat\n"
        "    handler: chat\n"
        "    options: {history: -1}\n"
    )
    assert_problem(one_problem(text), 5, 15, "endpoints[1].options.history", "greater than or equal to 0")


def test_unknown_handler_option_lists_the_options() -> None:
    text = (
        "endpoints:\n"
        "  - {path: /ws, handler: echo}\n"
        "  - path: /chat\n"
        "    handler: chat\n"
        "    options:\n"
        "      history: 10\n"
        "      histroy: 3\n"
    )
    assert_problem(one_problem(text), 7, 7, "endpoints[1].options.histroy", "unknown key",
                   "did you mean 'history'?", "allowed keys: history, keep, history_bytes, keep_for")


def test_handler_without_options_refuses_any_option() -> None:
    text = "endpoints:\n  - path: /ws\n    handler: echo\n    options: {x: 1}\n"
    assert_problem(one_problem(text), 4, 15, "endpoints[0].options.x", "unknown key")


def test_options_must_be_a_mapping() -> None:
    text = "endpoints:\n  - path: /chat\n    handler: chat\n    options: [1]\n"
    assert_problem(one_problem(text), 4, 5, "endpoints[0].options")


# --- deployment checks -----------------------------------------------------------------------


def test_workers_with_memory_broker() -> None:
    text = "server:\n  host: 127.0.0.1\n  workers: 2\nendpoints:\n  - {path: /ws, handler: echo}\n"
    assert_problem(one_problem(text), 3, 3, "server.workers", "broker", "Redis")


def test_workers_with_port_zero() -> None:
    text = (
        "broker: redis://127.0.0.1:6379/0\nserver: {workers: 2, port: 0}\n"
        "endpoints:\n  - {path: /ws, handler: echo}\n"
    )
    assert_problem(one_problem(text), 2, 22, "server.port", "fixed port")


def test_workers_with_redis_broker_are_fine() -> None:
    text = "broker: redis://127.0.0.1:6379/0\nserver: {workers: 2}\nendpoints:\n  - {path: /ws, handler: echo}\n"
    assert ok(text).config.server.workers == 2


# --- several mistakes at once ----------------------------------------------------------------


def test_several_problems_are_all_reported() -> None:
    text = (
        "server:\n"
        "  port: -1\n"
        "endpoints:\n"
        "  - path: ws\n"
        "    handler: echo\n"
        "  - path: /c\n"
        "    handler: chat\n"
        "    bogus: 1\n"
    )
    found = problems_of(text)
    assert [(p.line, p.column, p.key) for p in found] == [
        (2, 3, "server.port"),
        (4, 5, "endpoints[0].path"),
        (8, 5, "endpoints[1].bogus"),
    ]


def test_several_handler_problems_are_all_reported() -> None:
    text = (
        "endpoints:\n"
        "  - path: /a\n"
        "    handler: nope\n"
        "  - path: /c\n"
        "    handler: chat\n"
        "    options: {history: -1, colour: red}\n"
        "  - path: /d\n"
        "    handler: 'json:JSONDecoder'\n"
    )
    found = problems_of(text)
    assert {(p.line, p.key) for p in found} == {
        (3, "endpoints[0].handler"),
        (6, "endpoints[1].options.history"),
        (6, "endpoints[1].options.colour"),
        (8, "endpoints[2].handler"),
    }


def test_structural_and_handler_problems_are_reported_together() -> None:
    """A bad value in ``server:`` must not hide an unknown handler further down: one run
    of ``wsgate check`` should list every mistake in the file."""
    text = "server:\n  port: -1\nendpoints:\n  - path: /ws\n    handler: ecko\n"
    found = problems_of(text)
    assert {p.key for p in found} == {"server.port", "endpoints[0].handler"}


# --- precedence ------------------------------------------------------------------------------

BOTH = "endpoints:\n  - {path: /ws, handler: echo}\n  - {path: /chat, handler: chat}\n"


def _policies(settings: Any) -> dict[str, Any]:
    return {e.path: e.policy for e in settings.endpoints}


def test_wsgate_defaults() -> None:
    p = _policies(ok(BOTH))["/ws"]
    assert p.origins == "same-origin"
    assert p.allow_missing_origin is True
    assert (p.heartbeat.interval, p.heartbeat.timeout) == (20.0, 10.0)
    assert p.idle_timeout == 0
    assert p.max_message_size == 1 << 20
    assert p.rate_limit is None


def test_chat_gets_a_rate_limit_by_default_echo_does_not() -> None:
    policies = _policies(ok(BOTH))
    assert policies["/ws"].rate_limit is None
    rate = policies["/chat"].rate_limit
    assert rate is not None
    assert (rate.messages, rate.per, rate.burst) == (20, 1.0, 40)


def test_endpoint_rate_limit_null_disables_the_handler_default() -> None:
    text = "endpoints:\n  - path: /chat\n    handler: chat\n    rate_limit: null\n"
    assert ok(text).endpoints[0].policy.rate_limit is None


def test_global_rate_limit_overrides_the_handler_default() -> None:
    settings = ok("policy:\n  rate_limit: {messages: 5, per: 2s}\n" + BOTH)
    for policy in _policies(settings).values():
        assert policy.rate_limit is not None
        assert (policy.rate_limit.messages, policy.rate_limit.per, policy.rate_limit.burst) == (5, 2.0, None)


def test_global_rate_limit_null_overrides_the_handler_default() -> None:
    assert _policies(ok("policy:\n  rate_limit: null\n" + BOTH))["/chat"].rate_limit is None


def test_endpoint_overrides_global_policy() -> None:
    text = (
        "policy:\n  idle_timeout: 1m\n  origins: '*'\n  rate_limit: {messages: 5}\n"
        "endpoints:\n"
        "  - {path: /ws, handler: echo}\n"
        "  - path: /chat\n    handler: chat\n    idle_timeout: 5\n    origins: [https://app.example.com]\n"
        "    rate_limit: {messages: 7, per: 1s}\n"
    )
    policies = _policies(ok(text))
    assert policies["/ws"].idle_timeout == 60.0
    assert policies["/ws"].origins == "*"
    assert policies["/chat"].idle_timeout == 5.0
    assert policies["/chat"].origins == ["https://app.example.com"]
    assert policies["/chat"].rate_limit is not None
    assert policies["/chat"].rate_limit.messages == 7


def test_nested_blocks_are_replaced_whole() -> None:
    text = (
        "policy:\n  heartbeat: {interval: 5s, timeout: 2s}\n"
        "endpoints:\n  - {path: /a, handler: echo}\n"
        "  - path: /b\n    handler: echo\n    heartbeat: {timeout: 1s}\n"
    )
    policies = _policies(ok(text))
    assert (policies["/a"].heartbeat.interval, policies["/a"].heartbeat.timeout) == (5.0, 2.0)
    # the endpoint's block replaces the global one: interval falls back to wsgate's default
    assert (policies["/b"].heartbeat.interval, policies["/b"].heartbeat.timeout) == (20.0, 1.0)


class _Picky(Handler):
    policy_defaults: ClassVar[dict[str, Any]] = {"idle_timeout": 30.0, "max_message_size": 4096}

    async def on_message(self, conn: Connection, message: Message) -> None:
        await conn.send(message)


def test_four_levels_of_precedence() -> None:
    registry = Registry()
    registry.register("picky", _Picky)
    text = (
        "policy:\n  max_message_size: 8KiB\n"
        "endpoints:\n"
        "  - {path: /plain, handler: echo}\n"
        "  - {path: /picky, handler: picky}\n"
        "  - {path: /own, handler: picky, max_message_size: 100, idle_timeout: 0}\n"
    )
    policies = _policies(ok(text, registry))
    # wsgate default < global policy
    assert (policies["/plain"].idle_timeout, policies["/plain"].max_message_size) == (0.0, 8192)
    # handler default applies where the config says nothing; global policy beats it
    assert (policies["/picky"].idle_timeout, policies["/picky"].max_message_size) == (30.0, 8192)
    # the endpoint beats everything
    assert (policies["/own"].idle_timeout, policies["/own"].max_message_size) == (0.0, 100)


def test_invalid_merged_policy_is_reported_at_the_endpoint() -> None:
    class Broken(Handler):
        policy_defaults: ClassVar[dict[str, Any]] = {"slow_client": "explode"}

    registry = Registry()
    registry.register("broken", Broken)
    problem = one_problem("endpoints:\n  - {path: /b, handler: broken}\n", registry)
    assert problem.key == "endpoints[0].slow_client"


# --- environment overrides -------------------------------------------------------------------


def test_env_broker_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSGATE_BROKER", "redis://127.0.0.1:6390/3")
    settings = ok("broker: memory\n" + BOTH)
    assert settings.config.broker == "redis://127.0.0.1:6390/3"


def test_env_broker_lets_workers_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "server: {workers: 2}\n" + BOTH
    assert one_problem(text).key == "server.workers"
    monkeypatch.setenv("WSGATE_BROKER", "redis://127.0.0.1:6390/0")
    assert ok(text).config.server.workers == 2


def test_env_broker_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSGATE_BROKER", "kafka://somewhere")
    problem = one_problem(BOTH)
    assert problem.key == "broker"
    assert "Redis URL" in problem.message


def test_empty_env_broker_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSGATE_BROKER", "")
    assert ok(BOTH).config.broker == "memory"


def test_env_api_token(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ok(BOTH).config.api.token is None
    monkeypatch.setenv("WSGATE_API_TOKEN", "s3cret")
    assert ok(BOTH).config.api.token == "s3cret"
    assert ok("api: {token: from-file}\n" + BOTH).config.api.token == "s3cret"


def test_api_token_from_file_without_env() -> None:
    assert ok("api: {token: from-file}\n" + BOTH).config.api.token == "from-file"


# --- the command line ------------------------------------------------------------------------


def _run(args: list[str], cwd: Path, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_")}
    return subprocess.run([sys.executable, "-m", "wsgate", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("endpoints:\n  - path: /chat\n    handler: chat\n    options: {history: -1}\n",
         ":4:15: endpoints[0].options.history: "),
        ("endpoints:\n  - {path: /ws, handler: echo}\n  - path: /x\n    handler: nope\n",
         ":4:5: endpoints[1].handler: unknown handler 'nope'; known handlers: channels, chat, echo"),
        ("server:\n  workers: 3\nendpoints:\n  - {path: /ws, handler: echo}\n", ":2:3: server.workers: "),
        ("endpoints:\n  - {path: /ws, handler: echo\n", ":3:1: YAML syntax error"),
    ],
)
def test_check_command_reports_and_exits_2(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    result = _run(["check", "--config", str(config)], tmp_path)
    assert result.returncode == 2, result
    assert f"{config}{expected}" in result.stderr
    assert "listening" not in result.stdout + result.stderr


def test_serve_with_a_bad_config_exits_2_without_binding(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("server: {port: 0}\nendpoints:\n  - path: /metrics\n    handler: echo\n")
    result = _run(["--config", str(config), "--port", "0"], tmp_path, timeout=30)  # raises if it keeps running
    assert result.returncode == 2
    assert f"{config}:3:5: endpoints[0].path: '/metrics' is used by wsgate itself" in result.stderr
    assert "listening" not in result.stdout + result.stderr


def test_command_line_override_is_checked(tmp_path: Path) -> None:
    config = tmp_path / "ok.yaml"
    config.write_text("server:\n  port: 8080\nendpoints:\n  - {path: /ws, handler: echo}\n")
    result = _run(["check", "--config", str(config), "--workers", "2"], tmp_path)
    assert result.returncode == 2
    assert "server.workers" in result.stderr


def test_check_on_the_shipped_config(tmp_path: Path) -> None:
    result = _run(["check", "--config", str(SHIPPED)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert not re.search(r":\d+:\d+: ", result.stderr), result.stderr
    out = result.stdout
    assert re.search(r"^/ws\s+->\s+echo\b", out, re.M), out
    assert re.search(r"^/chat\s+->\s+chat\b", out, re.M), out
    assert "would listen on 127.0.0.1:8080" in out
    assert "wsgate listening on http" not in out  # check binds nothing


def test_schema_command_prints_the_schema(tmp_path: Path) -> None:
    result = _run(["schema"], tmp_path)
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["$schema"].endswith("/2020-12/schema")
    endpoint = schema["$defs"]["EndpointSpec"]
    branches = {b["if"]["properties"]["handler"]["const"]: b["then"] for b in endpoint["allOf"]}
    assert set(branches) >= {"chat", "echo"}
    chat_options = branches["chat"]["properties"]["options"]
    assert chat_options["properties"]["history"]["minimum"] == 0
    assert chat_options["additionalProperties"] is False
    assert branches["echo"]["properties"]["options"]["additionalProperties"] is False
    assert {"path", "handler", "options"} <= set(endpoint["properties"])


def test_shipped_config_is_valid_against_the_schema(tmp_path: Path) -> None:
    schema = json.loads(_run(["schema"], tmp_path).stdout)
    validator = jsonschema.Draft202012Validator(schema)
    config = yaml.safe_load(SHIPPED.read_text())
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config)]
    assert errors == []
    # and the schema does catch what parse_config refuses
    config["endpoints"][1]["options"] = {"history": -1}
    assert list(validator.iter_errors(config))
    config["endpoints"][1]["options"] = {"histroy": 5}
    assert list(validator.iter_errors(config))
