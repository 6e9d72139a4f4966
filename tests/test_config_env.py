"""``${VAR}`` in config.yaml: expanded in string values, refused when unset (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgate import ConfigError
from wsgate.config import Registry, parse_config
from wsgate.config.envvars import expand_env
from wsgate.config.yamlsource import load_yaml

BASE = "endpoints:\n  - {path: /ws, handler: echo}\n"


def expanded(text: str, environ: dict[str, str]) -> object:
    src = load_yaml(text, "config.yaml")
    problems = expand_env(src, environ)
    assert problems == []
    return src.data


def test_a_whole_value_and_a_part_of_one() -> None:
    text = "broker: redis://:${PASS}@127.0.0.1:6379/0\napi: {token: '${TOKEN}'}\n" + BASE
    data = expanded(text, {"PASS": "s3cret", "TOKEN": "t0k"})
    assert data == {"broker": "redis://:s3cret@127.0.0.1:6379/0", "api": {"token": "t0k"},
                    "endpoints": [{"path": "/ws", "handler": "echo"}]}


def test_double_dollar_is_a_literal_dollar_and_keys_are_left_alone() -> None:
    data = expanded("'${K}': {a: 'cost $$5 and $${NOT}'}\n", {"K": "x"})
    assert data == {"${K}": {"a": "cost $5 and ${NOT}"}}


def test_an_unset_variable_is_an_error_at_its_line() -> None:
    text = BASE + "api:\n  token: ${WSGATE_TEST_SURELY_UNSET}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.yaml", Registry())
    message = str(info.value)
    assert message.startswith("config.yaml:4:3: api.token: environment variable WSGATE_TEST_SURELY_UNSET is not set")


def test_a_malformed_reference_names_itself() -> None:
    src = load_yaml("a: ${not a name}\nb: ${}\n", "c.yaml")
    problems = expand_env(src, {})
    assert [(p.line, p.key) for p in problems] == [(1, "a"), (2, "b")]
    assert "${not a name} is not a variable name" in problems[0].message


def test_values_reach_the_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSGATE_TEST_PORT", "9123")
    settings = parse_config("server: {port: '${WSGATE_TEST_PORT}'}\n" + BASE, "config.yaml", Registry())
    assert settings.config.server.port == 9123


@given(st.text(alphabet=st.characters(blacklist_characters="$", blacklist_categories=("Cs",))))
def test_text_without_a_dollar_is_unchanged(value: str) -> None:
    src = load_yaml("k: v\n", "c.yaml")
    src.data = {"k": value}
    assert expand_env(src, {}) == []
    assert src.data == {"k": value}


@given(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True), st.text(max_size=20))
def test_any_value_is_substituted_verbatim(name: str, value: str) -> None:
    src = load_yaml("k: v\n", "c.yaml")
    src.data = {"k": f"<${{{name}}}>"}
    assert expand_env(src, {name: value}) == []
    assert src.data == {"k": f"<{value}>"}
