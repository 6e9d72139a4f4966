"""Names a user chooses in config.yaml may be kebab-case, as YAML keys usually are: the
authenticators of ``auth:`` (issue: ``staff-tokens`` was refused) and every other name
(handler names, paths, rooms, cookies, claims, subprotocols). A name that cannot be
taken is refused with the reason."""

from __future__ import annotations

import jwt
import pytest

from wsgate import ConfigError, Connection, Handler, Message
from wsgate.config import Registry, parse_config
from wsgate.testing import run_gateway

SECRET = "kebab-secret-of-at-least-32-bytes!"
KEBAB = f"""\
auth:
  staff-tokens:
    jwt: {{algorithms: [HS256], secret: "{SECRET}", user_claim: user-id}}
    cookie: staff-session
policy:
  auth: staff-tokens
  allow: {{team-role: [on-call, night-shift]}}
  subprotocols: [chat-v1]
endpoints:
  - path: /staff-chat
    handler: chat
    options: {{default_room: front-desk, name_claim: display-name, rooms_claim: chat-rooms}}
  - {{path: /loud-echo, handler: loud-echo, auth: other-tokens, allow: null}}
  - {{path: /open-door, handler: echo, auth: null, allow: null}}
"""
OTHER = f"""\
  other_tokens2:
    jwt: {{algorithms: [HS256], secret: "{SECRET}"}}
  other-tokens:
    http: {{url: "http://127.0.0.1:9/check-user"}}
"""


class LoudEcho(Handler):
    async def on_message(self, conn: Connection, message: Message) -> None:
        await conn.send(str(message).upper())


def _registry() -> Registry:
    registry = Registry(plugins=False)
    registry.register("loud-echo", LoudEcho)
    return registry


def test_kebab_case_names_everywhere_a_user_names_something() -> None:
    text = KEBAB.replace("policy:\n", OTHER + "policy:\n", 1)
    settings = parse_config(text, "config.yaml", _registry())
    assert list(settings.config.auth) == ["staff-tokens", "other_tokens2", "other-tokens"]
    staff, loud, open_door = settings.endpoints
    assert (staff.path, staff.policy.auth, staff.policy.allow) == (
        "/staff-chat", "staff-tokens", {"team-role": ["on-call", "night-shift"]})
    assert staff.options.model_dump()["default_room"] == "front-desk"
    assert (loud.handler_cls, loud.policy.auth) == (LoudEcho, "other-tokens")
    assert settings.config.auth["staff-tokens"].cookie == "staff-session"
    assert open_door.policy.auth is None


@pytest.mark.parametrize(("name", "why"), [
    ("staff.tokens", "a '.' would make keys such as auth.NAME.jwt ambiguous"),
    ("staff tokens", "use ASCII letters, digits, '_' and '-' (not first)"),
    ("-tokens", "'-' (not first)"),
    ("tokens\n", "e.g. 'users' or 'staff-tokens'"),
    ("jetons-é", "ASCII letters"),
])
def test_a_name_that_cannot_be_taken_says_why(name: str, why: str) -> None:
    text = f'auth:\n  "{name.encode("unicode_escape").decode()}":\n    python: "hooks:check"\n' \
           "endpoints:\n  - {path: /ws, handler: echo}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.yaml", Registry(plugins=False))
    [problem] = info.value.problems
    assert problem.line == 2
    assert f"{name!r} is not an authenticator name" in problem.message
    assert why in problem.message


async def test_an_endpoint_behind_a_kebab_case_authenticator_admits_and_refuses() -> None:
    auth = {"staff-tokens": {"jwt": {"algorithms": ["HS256"], "secret": SECRET}}}
    endpoints = {"/loud-echo": {"handler": LoudEcho, "auth": "staff-tokens"}}
    token = jwt.encode({"sub": "ann"}, SECRET, algorithm="HS256")
    async with run_gateway(endpoints, auth=auth) as gw:
        async with gw.connect("/loud-echo", headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.send_str("hi")
            assert await ws.receive_str(timeout=5) == "HI"
        async with gw.session.get(gw.url + "/loud-echo", headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                  "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) \
                as refused:
            assert refused.status == 401
