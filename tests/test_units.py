"""Human durations and sizes: wsgate.config.units.parse_duration / parse_size."""

from __future__ import annotations

import re

import pytest

from wsgate.config.units import parse_duration, parse_size


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
