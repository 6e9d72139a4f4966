"""Origin policy (wsgate.policy.origin): exact scheme/host/port matching, same-origin, wildcards."""

from __future__ import annotations

import pytest

from wsgate.policy.origin import OriginPattern, OriginPolicy, parse_origin_pattern

LISTED = OriginPolicy.from_config(["https://example.com", "http://localhost:*", "http://[::1]:8080"], True)


@pytest.mark.parametrize(
    "origin",
    [
        "https://example.com",
        "https://example.com:443",
        "https://EXAMPLE.com",
        "https://Example.Com",
        "HTTPS://example.com",
        "http://localhost",
        "http://localhost:80",
        "http://localhost:3000",
        "http://localhost:65535",
        "http://LOCALHOST:8080",
        "http://[::1]:8080",
    ],
)
def test_listed_origins_are_allowed(origin: str) -> None:
    assert LISTED.allows(origin, "gateway.test")


@pytest.mark.parametrize(
    "origin",
    [
        # no substring, prefix or suffix matching
        "https://example.com.evil.net",
        "https://evil-example.com",
        "https://evilexample.com",
        "https://sub.example.com",
        "https://example.co",
        "https://example.com.",
        # scheme and port are part of the origin
        "http://example.com",
        "http://example.com:443",
        "https://example.com:8443",
        "wss://example.com",
        "https://localhost",
        "https://localhost:3000",
        "http://[::1]",
        "http://[::1]:8081",
        "http://[::2]:8080",
        "http://127.0.0.1:8080",
        # malformed or opaque
        "null",
        "",
        " ",
        "example.com",
        "//example.com",
        "https://",
        "https://example.com/path",
        "https://example.com?x=1",
        "https://example.com#frag",
        "https://user@example.com",
        "https://example.com:abc",
        "https://example.com:99999",
        "ftp://example.com",
        "file://",
        "https://[::1",
    ],
)
def test_other_origins_are_refused(origin: str) -> None:
    assert not LISTED.allows(origin, "example.com")


@pytest.mark.parametrize(
    ("pattern", "origin", "allowed"),
    [
        ("http://a.test", "http://a.test:80", True),
        ("http://a.test:80", "http://a.test", True),
        ("https://a.test", "https://a.test:443", True),
        ("https://a.test:443", "https://a.test", True),
        ("http://a.test", "http://a.test:8080", False),
        ("http://a.test:8080", "http://a.test", False),
        ("http://a.test:*", "http://a.test", True),
        ("http://a.test:*", "http://a.test:1", True),
        ("http://a.test:*", "https://a.test:1", False),
        ("http://a.test:*", "http://b.test:1", False),
        ("http://a.test:*", "http://a.test.evil:1", False),
        ("HTTP://A.Test", "http://a.test", True),
        ("http://[::1]:*", "http://[::1]:5173", True),
        ("http://[::1]:*", "http://[::2]:5173", False),
        ("http://127.0.0.1:*", "http://127.0.0.1:9", True),
        ("http://127.0.0.1:*", "http://127.0.0.10:9", False),
    ],
)
def test_pattern_matching(pattern: str, origin: str, allowed: bool) -> None:
    assert OriginPolicy.from_config([pattern], True).allows(origin, None) is allowed


def test_parse_origin_pattern_normalises() -> None:
    assert parse_origin_pattern("HTTPS://App.Example.COM") == OriginPattern("https", "app.example.com", 443)
    assert parse_origin_pattern("http://localhost:*") == OriginPattern("http", "localhost", None)
    assert parse_origin_pattern("http://[::1]:8080") == OriginPattern("http", "::1", 8080)
    assert parse_origin_pattern("http://a.test") == OriginPattern("http", "a.test", 80)


@pytest.mark.parametrize(
    "pattern",
    [
        "example.com",
        "localhost:8080",
        "*",
        "null",
        "",
        "ftp://example.com",
        "https://example.com/path",
        "https://example.com?q",
        "https://user@example.com",
        "https://example.com:99999",
        "https://example.com:abc",
        "https://example.com:*:*",
        "https://",
    ],
)
def test_bad_patterns_raise_a_helpful_value_error(pattern: str) -> None:
    with pytest.raises(ValueError, match="is not an origin") as info:
        parse_origin_pattern(pattern)
    message = str(info.value)
    assert repr(pattern) in message
    assert "scheme://host[:port]" in message
    assert "http://localhost:*" in message  # shows the wildcard form too


@pytest.mark.parametrize("pattern", ["https://*.example.com", "http://*:8080", "https://app.*.com"])
def test_host_wildcards_are_refused(pattern: str) -> None:
    """Only the port may be a wildcard. A ``*`` in the host can never match a real
    Origin, so accepting it silently would lock every browser out without a word."""
    with pytest.raises(ValueError, match="not an origin"):
        parse_origin_pattern(pattern)


def test_bad_pattern_in_policy_raises() -> None:
    with pytest.raises(ValueError, match=r"'example\.com' is not an origin"):
        OriginPolicy.from_config(["https://ok.test", "example.com"], True)


# --- same-origin: the Origin must equal the request's scheme + Host ------------------------

SAME = OriginPolicy.from_config("same-origin", True)


@pytest.mark.parametrize(
    ("origin", "host", "scheme", "allowed"),
    [
        ("http://a.test:8080", "a.test:8080", "http", True),
        ("http://a.test", "a.test", "http", True),
        ("http://a.test:80", "a.test", "http", True),
        ("http://a.test", "a.test:80", "http", True),
        ("http://A.TEST:8080", "a.test:8080", "http", True),
        ("http://a.test:8080", "A.Test:8080", "http", True),
        ("https://a.test", "a.test", "https", True),
        ("https://a.test", "a.test:443", "https", True),
        ("http://127.0.0.1:8080", "127.0.0.1:8080", "http", True),
        ("http://[::1]:8080", "[::1]:8080", "http", True),
        ("http://[::1]", "[::1]", "http", True),
        # different scheme, port or host
        ("https://a.test", "a.test", "http", False),
        ("http://a.test", "a.test", "https", False),
        ("http://a.test:8081", "a.test:8080", "http", False),
        ("http://a.test", "a.test:8080", "http", False),
        ("http://a.test:8080", "a.test", "http", False),
        ("http://a.test.evil.net:8080", "a.test:8080", "http", False),
        ("http://evil-a.test:8080", "a.test:8080", "http", False),
        ("http://b.test:8080", "a.test:8080", "http", False),
        ("http://[::1]:8081", "[::1]:8080", "http", False),
        ("http://[::2]:8080", "[::1]:8080", "http", False),
        ("http://127.0.0.1:8080", "[::1]:8080", "http", False),
        # no usable Host header, or a malformed one
        ("http://a.test", None, "http", False),
        ("http://a.test", "", "http", False),
        ("http://a.test", "a.test:nope", "http", False),
        ("http://a.test", "a.test/x", "http", False),
        # opaque or malformed Origin
        ("null", "a.test", "http", False),
        ("a.test", "a.test", "http", False),
    ],
)
def test_same_origin(origin: str, host: str | None, scheme: str, allowed: bool) -> None:
    assert SAME.allows(origin, host, scheme) is allowed


def test_same_origin_is_the_default_scheme_http() -> None:
    assert SAME.allows("http://a.test:8080", "a.test:8080")
    assert not SAME.allows("https://a.test:8080", "a.test:8080")


# --- "*" and a missing Origin ---------------------------------------------------------------

@pytest.mark.parametrize("origin", ["https://anything.test", "http://evil.example:1", "null", "garbage"])
def test_star_allows_every_origin(origin: str) -> None:
    assert OriginPolicy.from_config("*", False).allows(origin, "a.test")


@pytest.mark.parametrize(
    "policy",
    [
        OriginPolicy.from_config("*", True),
        OriginPolicy.from_config("same-origin", True),
        OriginPolicy.from_config(["https://a.test"], True),
        OriginPolicy.from_config([], True),
    ],
)
def test_missing_origin_allowed_when_configured(policy: OriginPolicy) -> None:
    assert policy.allows(None, "a.test") is True


@pytest.mark.parametrize(
    "policy",
    [
        OriginPolicy.from_config("*", False),
        OriginPolicy.from_config("same-origin", False),
        OriginPolicy.from_config(["https://a.test"], False),
    ],
)
def test_missing_origin_refused_when_configured(policy: OriginPolicy) -> None:
    assert policy.allows(None, "a.test") is False


def test_empty_list_refuses_every_present_origin() -> None:
    policy = OriginPolicy.from_config([], True)
    assert not policy.allows("http://a.test", "a.test")


def test_list_does_not_imply_same_origin() -> None:
    policy = OriginPolicy.from_config(["https://other.test"], True)
    assert not policy.allows("http://a.test:8080", "a.test:8080")


def test_from_config_modes() -> None:
    assert OriginPolicy.from_config("*", True).allow_any
    same = OriginPolicy.from_config("same-origin", False)
    assert same.same_origin
    assert not same.allow_any
    assert not same.allow_missing
    listed = OriginPolicy.from_config(["http://a.test:*"], True)
    assert listed.patterns == (OriginPattern("http", "a.test", None),)
    assert not listed.same_origin
    assert not listed.allow_any


# --- describe() -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("origins", "text"),
    [
        ("*", "*"),
        ("same-origin", "same-origin"),
        ([], "(none)"),
        (["https://a.test"], "https://a.test:443"),
        (["http://a.test", "http://localhost:*"], "http://a.test:80, http://localhost:*"),
        (["HTTPS://A.TEST:8443"], "https://a.test:8443"),
    ],
)
def test_describe(origins: str | list[str], text: str) -> None:
    assert OriginPolicy.from_config(origins, True).describe() == text


def test_describe_brackets_ipv6_hosts() -> None:
    """``http://::1:8080`` is not an origin anyone can read back; it must be ``http://[::1]:8080``."""
    described = OriginPolicy.from_config(["http://[::1]:8080", "http://[::1]:*"], True).describe()
    assert described == "http://[::1]:8080, http://[::1]:*"
    for part in described.split(", "):
        parse_origin_pattern(part)  # what describe() prints parses back
