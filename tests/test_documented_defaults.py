"""Every default the documentation prints, written into config.yaml exactly as printed, is
accepted (by the loader and by wsgate.schema.json, which editors check with), and means
the default it documents.

The option tables (a ``key`` or ``option`` column followed by ``default``) are read from
README.md and docs/*.md, so a new row is checked without touching this file. A table
under a heading this file does not know fails, naming the heading, until it is mapped
to the place in config.yaml its keys go. Defaults that are prose ("unlimited", "off",
"unset") are listed in ``PROSE`` with the reason; a listed row must exist and must not
be a literal, so the list cannot go stale.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from wsgate.config import Registry, Settings, parse_config

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REGISTRY = Registry(plugins=False)  # the built-ins document their own options; plugins theirs
SCHEMA = jsonschema.Draft202012Validator(json.loads((ROOT / "wsgate.schema.json").read_text(encoding="utf-8")))

# Heading above a table -> where its keys go in config.yaml.
SECTIONS = {
    "`server:`": "server",
    "`policy:` (per endpoint)": "policy",
    "Other top-level keys": "top",
    "Built-in handlers": "chat",  # the chat options; echo has none
    "Configuration": "channels",  # docs/channels.md: the channels handler's options
    "Per namespace": "namespace",  # docs/channels.md: the rules of one of its namespaces
    "Options": "pusher",  # docs/pusher.md: the pusher handler's options
}
PROSE = {
    ("server", "max_connections"): "unlimited: the key's absence (null)",
    ("server", "allowed_hosts"): "depends on host; the key's absence (null)",
    ("server", "tls"): "off: the key's absence; YAML would read `off` as false",
    ("policy", "max_connections"): "unlimited: the key's absence (null)",
    ("policy", "max_connections_per_ip"): "unlimited: the key's absence (null)",
    ("policy", "rate_limit"): "off, or chat's own default; both are tests/test_config.py's",
    ("top", "endpoints"): "required: there is no default",
    ("top", "api.token"): "unset: the key's absence (null)",
    ("channels", "token_auth"): "unset: the key's absence (null)",
    ("channels", "api_key"): "unset: the key's absence (null)",
    ("channels", "proxy"): "all off: every event's URL absent",
    ("namespace", "schema"): "unset: the key's absence (null)",
    ("pusher", "app_id"): "required: there is no default",
    ("pusher", "key"): "required: there is no default",
    ("pusher", "secret"): "required: there is no default",
}
_HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*$")
_ROW = re.compile(r"^\|(?P<cells>.*)\|\s*$")
_LITERAL = re.compile(r"^`(?P<text>[^`]+)`$")
BASE_ENDPOINT = "  - {path: /ws, handler: echo}\n"


@dataclass(frozen=True)
class Row:
    """One table row: where it is printed, which section, its key and its default cell."""

    where: str
    section: str
    key: str
    default: str

    @property
    def value(self) -> str:
        """The default as a user would copy it: a `code` cell without its backticks."""
        literal = _LITERAL.match(self.default)
        return literal["text"] if literal else self.default


def _cells(line: str) -> list[str]:
    match = _ROW.match(line)
    return [cell.strip() for cell in match["cells"].split("|")] if match else []


def option_rows(path: Path) -> Iterator[Row]:
    """The rows of every ``| key | default | ...`` (or ``option``) table in ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    heading = ""
    i = 0
    while i < len(lines):
        if found := _HEADING.match(lines[i]):
            heading = found["title"]
        header = _cells(lines[i])
        if header[:2] in (["key", "default"], ["option", "default"]):
            where = f"{path.relative_to(ROOT)}:{i + 1} (under {heading!r})"
            assert heading in SECTIONS, f"{where}: map this heading to a config.yaml section in SECTIONS"
            i += 2  # the header and its | --- | line
            while i < len(lines) and (cells := _cells(lines[i])):
                yield Row(f"{path.relative_to(ROOT)}:{i + 1}", SECTIONS[heading], cells[0].strip("`"), cells[1])
                i += 1
            continue
        i += 1


ROWS = [row for path in DOCS for row in option_rows(path)]
CHECKED = [row for row in ROWS if (row.section, row.key) not in PROSE]


def _nested(key: str, value: str, indent: str = "") -> str:
    """``a.b: v`` as YAML lines, the value copied verbatim."""
    head, dot, rest = key.partition(".")
    if not dot:
        return f"{indent}{head}: {value}\n"
    return f"{indent}{head}:\n" + _nested(rest, value, indent + "  ")


def configs(row: Row, value: str | None) -> dict[str, str]:
    """config.yaml texts that set ``row``'s key to ``value`` (None: leave it out), by placement."""
    setting = "" if value is None else _nested(row.key, value, "      ")
    if row.section == "server":
        return {"server:": "server:\n" + (setting.replace("      ", "  ", 1) if setting else "  {}\n")
                + "endpoints:\n" + BASE_ENDPOINT}
    if row.section == "policy":
        return {
            "policy:": "policy:\n" + (setting.replace("      ", "  ", 1) if setting else "  {}\n")
                       + "endpoints:\n" + BASE_ENDPOINT,
            "an endpoint": "endpoints:\n  - path: /ws\n    handler: echo\n" + setting.replace("      ", "    ", 1),
        }
    if row.section == "chat":
        options = "    options:\n" + setting if setting else ""
        return {"chat's options:": "endpoints:\n  - path: /chat\n    handler: chat\n" + options}
    if row.section in ("channels", "namespace"):
        if row.section == "namespace":
            setting = '      namespaces:\n        "":\n' + ("  " * 2 + setting if setting else '          {}\n')
        options = "    options:\n" + setting if setting else ""
        return {"channels' options:": "endpoints:\n  - path: /connection/websocket\n    handler: channels\n" + options}
    if row.section == "pusher":
        app = "    options:\n      app_id: '1'\n      key: k\n      secret: s\n"
        return {"pusher's options:": "endpoints:\n  - path: /app/k\n    handler: pusher\n" + app + setting}
    return {"the top level": setting.replace("      ", "", 1) + "endpoints:\n" + BASE_ENDPOINT}


def effective(row: Row, settings: Settings, placement: str) -> Any:
    """What the loaded config holds for ``row``'s key."""
    if row.section == "server":
        return getattr(settings.config.server, row.key)
    if row.section == "policy":
        return getattr(settings.endpoints[0].policy, row.key)
    if row.section in ("chat", "channels", "pusher"):
        return getattr(settings.endpoints[0].options, row.key)
    if row.section == "namespace":
        return getattr(settings.endpoints[0].options.namespaces[""], row.key)
    found: Any = settings.config
    for part in row.key.split("."):
        found = getattr(found, part)
    return found


def test_the_tables_are_found() -> None:
    sections = {row.section for row in ROWS}
    assert sections == set(SECTIONS.values()), sections
    keys = {(row.section, row.key) for row in ROWS}
    assert {("chat", "keep_for"), ("chat", "history_bytes"), ("policy", "heartbeat"),
            ("server", "shutdown_timeout"), ("top", "logging.level")} <= keys


def test_every_prose_default_is_a_row_and_not_a_literal() -> None:
    rows = {(row.section, row.key): row for row in ROWS}
    for entry, reason in PROSE.items():
        assert entry in rows, f"PROSE lists {entry}, which no table has any more ({reason})"
        assert not _LITERAL.match(rows[entry].default), f"{rows[entry].where}: {entry} now has a literal default"


@pytest.mark.parametrize("row", CHECKED, ids=[f"{row.section}.{row.key}" for row in CHECKED])
def test_the_printed_default_is_accepted_and_is_the_default(row: Row, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WSGATE_BROKER", raising=False)
    monkeypatch.delenv("WSGATE_API_TOKEN", raising=False)
    unset = configs(row, None)
    for placement, text in configs(row, row.value).items():
        settings = parse_config(text, "config.yaml", REGISTRY)  # raises ConfigError, naming the key, if refused
        errors = [error.message for error in SCHEMA.iter_errors(yaml.safe_load(text))]
        assert errors == [], f"{row.where}: wsgate.schema.json refuses {row.key}: {row.value} under {placement}"
        default = effective(row, parse_config(unset[placement], "config.yaml", REGISTRY), placement)
        assert effective(row, settings, placement) == default, (
            f"{row.where}: {row.key} printed as {row.default} under {placement} is not the default {default!r}")


# docs/auth.md gives the authenticators' defaults in its prose, not in a table: each is
# found by the phrase that prints it, then checked as the table rows are.
AUTH_MD = ROOT / "docs" / "auth.md"
AUTH_PROSE = {
    "jwt.jwks_cache": (r"`jwks_cache` \((?P<value>[^)]+)\)",
                       "jwt: {algorithms: [RS256], jwks_url: 'https://idp.example/jwks', jwks_cache: VALUE}"),
    "jwt.user_claim": (r"`user_claim` claim\s+\(`(?P<value>[^`]+)`\)",
                       "jwt: {algorithms: [HS256], secret: s3cret, user_claim: VALUE}"),
    "http.timeout": (r"\(`timeout`, (?P<value>[^)]+)\)", "http: {url: 'https://auth.example/check', timeout: VALUE}"),
}


@pytest.mark.parametrize("key", list(AUTH_PROSE))
def test_the_auth_defaults_printed_in_docs_auth_md_are_accepted_and_are_the_defaults(key: str) -> None:
    pattern, spec = AUTH_PROSE[key]
    found = re.search(pattern, AUTH_MD.read_text(encoding="utf-8"))
    assert found, f"docs/auth.md no longer prints the default of {key} as {pattern!r}; update AUTH_PROSE"
    kind, _, field = key.partition(".")

    def value_of(authenticator: str) -> Any:
        text = f"auth:\n  users: {{{authenticator}}}\nendpoints:\n" + BASE_ENDPOINT
        return getattr(getattr(parse_config(text, "config.yaml", REGISTRY).config.auth["users"], kind), field)

    assert value_of(spec.replace("VALUE", found["value"])) == value_of(spec.replace(f", {field}: VALUE", ""))
