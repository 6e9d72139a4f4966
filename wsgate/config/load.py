"""Reading config.yaml: validation with every problem located by file:line:col."""

from __future__ import annotations

import difflib
import importlib
import os
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel, ValidationError

from ..broker.cluster_url import CLUSTER_SCHEMES
from ..errors import ConfigError, ConfigProblem, HandlerLoadError
from ..handler import Handler
from ..observe.redact import redact_url
from .envvars import expand_env
from .models import Config, Endpoint, EndpointSpec, Policy, Settings, _LocatedValueError
from .registry import Registry
from .yamlsource import Located, load_yaml

__all__ = ["load_config", "parse_config"]

# --- error reporting -----------------------------------------------------------------

def _unwrap(annotation: Any) -> Any:
    """The model class inside ``X | None``, ``list[X]``, ``Annotated[X, ...]``."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found = _unwrap(arg)
            if isinstance(found, type) and issubclass(found, BaseModel):
                return found
    return annotation


def _allowed_keys(model: type[BaseModel], loc: Sequence[str | int]) -> list[str] | None:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _unwrap(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def _problems(exc: ValidationError, model: type[BaseModel], src: Located,
              prefix: tuple[str | int, ...] = ()) -> list[ConfigProblem]:
    problems = []
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
        message = error["msg"].removeprefix("Value error, ")
        ctx_error = (error.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _LocatedValueError):
            loc, message = ctx_error.loc, str(ctx_error)
        elif error["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1]) or []
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1) if loc else []
            message = f"unknown key; did you mean {close[0]!r}?" if close else "unknown key"
            if allowed:
                message += f"{' ' if close else '; '}allowed keys: {', '.join(allowed)}"
        elif error["type"] == "missing":
            message = "this key is required"
        full = (*prefix, *loc)
        problems.append(src.problem(full, message))
    return problems


def _duplicate_paths(raw: object, src: Located) -> list[ConfigProblem]:
    """Duplicate ``path:`` values in the raw ``endpoints`` list.

    Config's own uniqueness check runs only once every field is valid; this one lets a
    single run report duplicates together with the other mistakes."""
    problems = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(raw if isinstance(raw, list) else []):
        path = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(path, str):
            continue
        if path in seen:  # the same words as Config._unique_paths, so both reports collapse into one
            problems.append(src.problem(("endpoints", index, "path"),
                                        f"duplicate path {path!r}, already used by endpoints[{seen[path]}]"))
        else:
            seen[path] = index
    return problems


def _broker_problem(data: dict[str, Any], src: Located) -> ConfigProblem | None:
    """A problem if the broker is Redis but the ``redis`` package cannot be imported."""
    broker = data.get("broker")
    if not isinstance(broker, str) or not broker.startswith(("redis://", "rediss://", "unix://", *CLUSTER_SCHEMES)):
        return None
    try:
        importlib.import_module("redis")
    except ImportError:
        line, column = src.where(("broker",))
        origin = " (from WSGATE_BROKER)" if os.environ.get("WSGATE_BROKER") else ""
        return ConfigProblem(src.file, line, column, "",
                             f"broker {redact_url(broker)}{origin}: the redis package is not installed: "
                             "pip install 'wsgate[redis]'")
    return None


# --- loading ---------------------------------------------------------------------------

def _apply_env(data: dict[str, Any]) -> None:
    if broker := os.environ.get("WSGATE_BROKER"):
        data["broker"] = broker
    if token := os.environ.get("WSGATE_API_TOKEN"):
        api = data.get("api")
        data["api"] = {**(api if isinstance(api, dict) else {}), "token": token}


def _resolve(registry: Registry, src: Located, index: int, handler: str, options: dict[str, Any],
             problems: list[ConfigProblem], authenticators: frozenset[str]) -> tuple[type[Handler], BaseModel] | None:
    """The handler class and validated options of ``endpoints[index]``, or None with problems added.

    Validators of the options see ``info.context["authenticators"]``: the names of the
    ``auth:`` section, for an option that names one.
    """
    where = ("endpoints", index)
    try:
        cls = registry.resolve(handler)
    except HandlerLoadError as exc:
        problems.append(src.problem((*where, "handler"), str(exc)))
        return None
    try:
        return cls, cls.Options.model_validate(options, context={"authenticators": authenticators})
    except ValidationError as exc:
        problems.extend(_problems(exc, cls.Options, src, (*where, "options")))
        return None


def _auth_problems(config: Config, spec: EndpointSpec, index: int, policy: Policy,
                   src: Located) -> list[ConfigProblem]:
    """An endpoint's ``auth`` must name an authenticator; ``allow`` needs one."""
    def where(key: str) -> tuple[str | int, ...]:
        return ("endpoints", index, key) if key in spec.model_fields_set else ("policy", key)

    problems = []
    if policy.auth is not None and policy.auth not in config.auth:
        known = f"the auth: section defines {', '.join(config.auth)}" if config.auth else "the auth: section is empty"
        close = difflib.get_close_matches(policy.auth, list(config.auth), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        problems.append(src.problem(where("auth"), f"no authenticator named {policy.auth!r}; {hint}{known}"))
    problems += _cookie_origin_problems(config, spec, index, policy, src)
    if policy.allow is not None and policy.auth is None:
        if "auth" in spec.model_fields_set and "allow" not in spec.model_fields_set:
            problems.append(src.problem(where("auth"), "this endpoint is anonymous, but policy.allow applies "
                                                       "to it too; add allow: null here"))
        else:
            problems.append(src.problem(where("allow"), "allow checks claims, so it needs auth: NAME "
                                                        "(an authenticator of the auth: section)"))
    return problems


def _cookie_origin_problems(config: Config, spec: EndpointSpec, index: int, policy: Policy,
                            src: Located) -> list[ConfigProblem]:
    """A token from a cookie needs origins the endpoint names: with ``origins: '*'``
    any web site could open the endpoint with its visitors' cookies."""
    authenticator = config.auth.get(policy.auth) if policy.auth is not None else None
    if authenticator is None or authenticator.cookie is None or policy.origins != "*":
        return []
    if "origins" in spec.model_fields_set:
        where: tuple[str | int, ...] = ("endpoints", index, "origins")
    elif "origins" in config.policy.model_fields_set:
        where = ("policy", "origins")
    else:
        where = ("endpoints", index, "handler")  # the handler's policy_defaults chose '*'
    return [src.problem(where, (
        f"origins '*' with auth {policy.auth!r}, which takes the token from the cookie "
        f"{authenticator.cookie!r} (auth.{policy.auth}.cookie), would let any web site connect as its "
        "visitors (cross-site WebSocket hijacking); list the origins that may connect, e.g. "
        "['https://app.example.com'], keep 'same-origin', or remove the cookie"))]


def parse_config(text: str, file: str, registry: Registry) -> Settings:
    """Validate config text: its schema, its handlers and their options; raise ConfigError listing every problem.

    Only the text: the files and modules it names (key files, hooks, the TLS pair) are
    read when the app is built from it (``wsgate.prepare``).
    """
    src = load_yaml(text, file)
    if not isinstance(src.data, dict):
        raise ConfigError([src.problem((), "the file must be a mapping with at least an 'endpoints:' list")])
    if env_problems := expand_env(src, os.environ):
        raise ConfigError(env_problems)
    data = dict(src.data)
    _apply_env(data)
    broker_problem = _broker_problem(data, src)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        # Also check the handlers of well-formed entries, so one run reports everything.
        problems = _problems(exc, Config, src)
        raw = data.get("endpoints")
        auth = data.get("auth")
        names = frozenset(auth) if isinstance(auth, dict) else frozenset()
        problems += _duplicate_paths(raw, src)
        if broker_problem:
            problems.append(broker_problem)
        for index, entry in enumerate(raw if isinstance(raw, list) else []):
            if isinstance(entry, dict) and isinstance(entry.get("handler"), str):
                options = entry.get("options", {})
                _resolve(registry, src, index, entry["handler"], options if isinstance(options, dict) else {},
                         problems, names)
        raise ConfigError(sorted(set(problems), key=lambda p: (p.line, p.column))) from None

    problems = [broker_problem] if broker_problem else []
    endpoints = []
    global_policy = config.policy.model_dump(exclude_unset=True)
    for index, spec in enumerate(config.endpoints):
        where = ("endpoints", index)
        resolved = _resolve(registry, src, index, spec.handler, spec.options, problems, frozenset(config.auth))
        if resolved is None:
            continue
        cls, options = resolved
        merged = {**cls.policy_defaults, **global_policy, **spec.overrides()}
        try:
            policy = Policy.model_validate(merged)
        except ValidationError as exc:
            problems.extend(_problems(exc, Policy, src, where))
            continue
        problems += _auth_problems(config, spec, index, policy, src)
        endpoints.append(Endpoint(path=spec.path, handler_ref=spec.handler, handler_cls=cls,
                                  options=options, policy=policy))
    if problems:
        raise ConfigError(problems)
    settings = Settings(file=file, config=config, endpoints=tuple(endpoints), source=src)
    settings.check_deployment()
    return settings


def load_config(path: str | Path, registry: Registry) -> Settings:
    """Read and validate a config file; handler modules resolve from its directory."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problem = ConfigProblem(str(path), 1, 1, "", f"cannot read the config file: there is no file "
                                f"{path.absolute()}; create it, or pass --config PATH to use another file")
        raise ConfigError([problem]) from None
    except OSError as exc:
        problem = ConfigProblem(str(path), 1, 1, "",
                                f"cannot read the config file {path.absolute()}: {exc.strerror}")
        raise ConfigError([problem]) from None
    registry.add_search_path(path.resolve().parent)
    return parse_config(text, str(path), registry)
