"""Headers as aiohttp hands them over (CIMultiDictProxy) are read by lookup, not by a
scan: the answers must be the scan's, whatever the case and however many values."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from wsgate.auth.tokens import extract_token
from wsgate.gateway.identify import _without_cookies

NAMES = st.sampled_from(["Authorization", "authorization", "AUTHORIZATION", "AuThOrIzAtIoN", "Cookie", "cookie",
                         "COOKIE", "Host", "X-Authorization"])
VALUES = st.sampled_from(["Bearer a", "bearer b", "Basic c", "Bearer ", "sid=d", "sid=", "x", "  BEARER e  "])


def scanned(pairs: list[tuple[str, str]], cookie: str | None) -> str | None:
    """What extract_token answers for these headers, worked out by hand."""
    for name, value in pairs:
        scheme, _, rest = value.strip().partition(" ")
        if name.lower() == "authorization" and scheme.lower() == "bearer" and rest.strip():
            return rest.strip()
    if cookie:
        for name, value in pairs:
            if name.lower() == "cookie":
                for pair in value.split(";"):
                    key, sep, found = pair.partition("=")
                    if sep and key.strip() == cookie and found.strip():
                        return found.strip()
    return None


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(NAMES, VALUES), max_size=6), st.sampled_from([None, "sid"]))
def test_request_headers_give_the_token_a_scan_finds(pairs: list[tuple[str, str]], cookie: str | None) -> None:
    headers = CIMultiDict(pairs)
    expected = scanned(pairs, cookie)
    assert extract_token(headers, {}, None, cookie) == expected
    assert extract_token(CIMultiDictProxy(headers), {}, None, cookie) == expected
    assert extract_token(dict(pairs), {}, None, cookie) == scanned(list(dict(pairs).items()), cookie)


def test_every_authorization_value_counts() -> None:
    headers = CIMultiDictProxy(CIMultiDict([("Authorization", "Basic YTpi"), ("AUTHORIZATION", "Bearer tok")]))
    assert extract_token(headers, {}, None, None) == "tok"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(NAMES, VALUES), max_size=6))
def test_cookies_are_taken_out_whatever_their_case(pairs: list[tuple[str, str]]) -> None:
    headers = CIMultiDictProxy(CIMultiDict(pairs))
    left = _without_cookies(headers)
    assert [(k, v) for k, v in left.items()] == [(k, v) for k, v in pairs if k.lower() != "cookie"]
    if not any(k.lower() == "cookie" for k, _ in pairs):
        assert left is headers  # nothing to take out: no copy
    plain = dict(pairs)
    assert {k: v for k, v in _without_cookies(plain).items()} == {k: v for k, v in plain.items()
                                                                   if k.lower() != "cookie"}
