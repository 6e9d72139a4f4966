"""Human durations and sizes: wsgate.config.units.parse_duration / parse_size, and the
types a plugin's own options use, wsgate.Duration and wsgate.Size."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator

import pytest
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.fields import FieldInfo

from wsgate import ConfigError, Duration, Handler, Size
from wsgate.config import Registry, parse_config
from wsgate.config.models import Config
from wsgate.config.units import DURATION_PATTERN, SIZE_PATTERN, parse_duration, parse_size


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("1ms", 0.001),
        ("0ms", 0.0),
        ("20s", 20.0),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("0.5h", 1800.0),
        ("30", 30.0),
        ("  20s  ", 20.0),
        ("20 s", 20.0),
        (30, 30.0),
        (0, 0.0),
        (0.25, 0.25),
        (2.5, 2.5),
    ],
)
def test_parse_duration_accepts(value: object, seconds: float) -> None:
    result = parse_duration(value)
    assert result == pytest.approx(seconds)
    assert isinstance(result, float)


@pytest.mark.parametrize(
    "value",
    ["", "   ", "soon", "20 seconds", "5 minutes", "2d", "1w", "s", "ms", "-", "1.2.3s",
     "20s30", "1e3", "+5s", "0x10", None, [], {}, object()],
)
def test_parse_duration_refuses_garbage(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration such as"):
        parse_duration(value)


@pytest.mark.parametrize("value", ["20sec", "2 m s", "ms20"])
def test_parse_duration_error_quotes_the_input(value: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"got {value!r}")):
        parse_duration(value)


@pytest.mark.parametrize("value", [-1, -0.5, -3600])
def test_parse_duration_refuses_negative_numbers(value: float) -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_duration(value)


@pytest.mark.parametrize("value", ["-1s", "-500ms"])
def test_parse_duration_refuses_negative_strings(value: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_duration_refuses_booleans(value: bool) -> None:
    # bool is an int subclass: YAML's `yes`/`true` must not become 1 second.
    with pytest.raises(ValueError, match="not a boolean"):
        parse_duration(value)


def test_parse_duration_error_names_the_value() -> None:
    with pytest.raises(ValueError, match="got 'forever'"):
        parse_duration("forever")


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("64KiB", 64 * 1024),
        ("1MiB", 1024 * 1024),
        ("2GiB", 2 * 1024**3),
        ("1KB", 1000),
        ("1MB", 1000**2),
        ("1GB", 1000**3),
        ("512B", 512),
        ("0B", 0),
        ("1.5KiB", 1536),
        ("0.5MiB", 512 * 1024),
        ("65536", 65536),
        (" 64 KiB ", 64 * 1024),
        (65536, 65536),
        (0, 0),
    ],
)
def test_parse_size_accepts(value: object, size: int) -> None:
    result = parse_size(value)
    assert result == size
    assert isinstance(result, int)


@pytest.mark.parametrize(
    "value",
    ["", "big", "64 kilobytes", "1TiB", "KiB", "1 K", "1.2.3KiB", "64KiB!",
     None, [], {}, 1.5, 64.0],
)
def test_parse_size_refuses_garbage(value: object) -> None:
    with pytest.raises(ValueError, match="expected a size such as"):
        parse_size(value)


@pytest.mark.parametrize("value", [-1, -65536])
def test_parse_size_refuses_negative_numbers(value: int) -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_size(value)


def test_parse_size_refuses_negative_strings() -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size("-1KiB")


@pytest.mark.parametrize("value", [True, False])
def test_parse_size_refuses_booleans(value: bool) -> None:
    with pytest.raises(ValueError, match="not a boolean"):
        parse_size(value)


def test_parse_size_error_names_the_value() -> None:
    with pytest.raises(ValueError, match="got 'huge'"):
        parse_size("huge")


# --- the plugin kit: wsgate.Duration and wsgate.Size in a handler's own options ---------------


class KitOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    every: Duration = Field(default=1.0, gt=0)
    biggest: Size = Field(default=1024, le=1 << 20)


class Kit(Handler[KitOptions]):
    Options = KitOptions


def _kit(options: str) -> str:
    return f"endpoints:\n  - path: /kit\n    handler: kit\n    options: {options}\n"


def _registry() -> Registry:
    registry = Registry(plugins=False)
    registry.register("kit", Kit)
    return registry


@pytest.mark.parametrize(("options", "every", "biggest"), [
    ("{every: 2m, biggest: 64KiB}", 120.0, 64 * 1024),
    ("{every: 500ms, biggest: 1MiB}", 0.5, 1 << 20),
    ("{every: 0.25, biggest: 512}", 0.25, 512),
    ("{}", 1.0, 1024),
])
def test_a_plugins_options_take_the_units_config_yaml_takes(options: str, every: float, biggest: int) -> None:
    found = parse_config(_kit(options), "config.yaml", _registry()).endpoints[0].options
    assert isinstance(found, KitOptions)
    assert (found.every, found.biggest) == (every, biggest)


@pytest.mark.parametrize(("options", "key", "fragment"), [
    ("{every: 10 minutes}", "every", "expected a duration such as 30, '500ms', '20s' or '2m', got '10 minutes'"),
    ("{every: 0s}", "every", "greater than 0"),
    ("{biggest: 2MiB}", "biggest", "less than or equal to 1048576"),
    ("{biggest: lots}", "biggest", "expected a size such as 65536, '64KiB' or '1MiB', got 'lots'"),
])
def test_a_plugins_bad_duration_or_size_is_located_and_explained(options: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_kit(options), "config.yaml", _registry())
    [problem] = info.value.problems
    assert (problem.line, problem.key) == (4, f"endpoints[0].options.{key}")
    assert fragment in problem.message


def test_the_schema_keeps_the_bounds_and_offers_the_spelling() -> None:
    every = KitOptions.model_json_schema()["properties"]["every"]["anyOf"]
    assert every[0] == {"type": "number", "exclusiveMinimum": 0}
    assert every[1]["type"] == "string"
    assert every[1]["pattern"] == DURATION_PATTERN
    biggest = KitOptions.model_json_schema()["properties"]["biggest"]["anyOf"]
    assert biggest[0] == {"type": "integer", "maximum": 1 << 20}
    assert biggest[1]["pattern"] == SIZE_PATTERN


@pytest.mark.parametrize("text", ["20s", " 2 m ", "1.5h", "30", "2d", "20 seconds", "-1s", "1e3", "", "1h30m"])
def test_the_schema_patterns_take_the_strings_the_parsers_take(text: str) -> None:
    for pattern, parse in ((DURATION_PATTERN, parse_duration), (SIZE_PATTERN, parse_size)):
        try:
            parse(text)
            parsed = True
        except ValueError:
            parsed = False
        assert (re.search(pattern, text) is not None) == parsed, (pattern, text)


# --- every duration and size in config.yaml takes the units --------------------------------

# Names that say "a time" or "an amount of bytes"; counts (max_connections, keep) are neither.
_TIME_OR_BYTES = re.compile(r"timeout|interval|ttl|_for$|cache|leeway|^per$|bytes|size|queue")


def _models(model: type[BaseModel], where: str) -> Iterator[tuple[str, type[BaseModel]]]:
    yield where, model
    for name, field in model.model_fields.items():
        for inner in _types_in(field.annotation):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                yield from _models(inner, f"{where}.{name}")


def _types_in(annotation: object) -> Iterator[object]:
    yield annotation
    for arg in typing.get_args(annotation):
        yield from _types_in(arg)


def _parser(field: FieldInfo) -> object:
    """The before-validator of ``field``, also inside ``X | None`` (an endpoint's policy keys)."""
    nested = [m for t in _types_in(field.annotation) if typing.get_origin(t) is typing.Annotated
              for m in t.__metadata__]
    return next((m.func for m in [*field.metadata, *nested] if isinstance(m, BeforeValidator)), None)


def _every_model() -> Iterator[tuple[str, type[BaseModel]]]:
    yield from _models(Config, "config")
    registry = Registry(plugins=False)
    for name in registry.names():
        yield from _models(registry.resolve(name).Options, f"{name} options")


def test_every_duration_and_size_in_config_yaml_takes_units() -> None:
    checked = []
    for where, model in _every_model():
        for name, field in model.model_fields.items():
            if _TIME_OR_BYTES.search(name):
                expected = parse_size if re.search("bytes|size|queue", name) else parse_duration
                assert _parser(field) is expected, f"{where}.{name}: declare it as wsgate.Duration or wsgate.Size"
                checked.append(f"{where}.{name}")
    assert {"config.server.handshake_timeout", "config.policy.send_queue", "config.policy.heartbeat.interval",
            "chat options.keep_for", "chat options.history_bytes", "chat options.presence_ttl",
            "config.policy.rate_limit.per"} <= set(checked), checked
