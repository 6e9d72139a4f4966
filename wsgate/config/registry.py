"""Turning a ``handler:`` value into a Handler class.

A value is either a registered name (the built-ins, plus every plugin installed under
the ``wsgate.handlers`` entry-point group) or ``module.path:ClassName``, importable
from the directory that holds the config file.

The built-ins live in the repository's ``handlers/`` folder but are installed as
``wsgate.builtins``, so a user's own ``handlers`` package beside config.yaml (with or
without ``__init__.py``, even with its own ``chat.py``) never shadows them.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from importlib.metadata import entry_points
from pathlib import Path

from pydantic import BaseModel

from ..errors import HandlerLoadError
from ..handler import ACCEPTS, Handler

__all__ = ["BUILTINS", "ENTRY_POINT_GROUP", "Registry", "check_handler_class"]

ENTRY_POINT_GROUP = "wsgate.handlers"
BUILTINS = {"echo": "wsgate.builtins.echo:Echo", "chat": "wsgate.builtins.chat:Chat",
            "channels": "wsgate.builtins.channels:Channels", "pusher": "wsgate.builtins.pusher:Pusher"}


def check_handler_class(cls: object, ref: str) -> type[Handler]:
    """``cls`` if it is a usable Handler class; HandlerLoadError saying what is wrong otherwise."""
    if not (isinstance(cls, type) and issubclass(cls, Handler)):
        raise HandlerLoadError(f"{ref!r} is not a subclass of wsgate.Handler")
    if cls.accepts not in ACCEPTS:
        raise HandlerLoadError(f"{ref}: accepts = {cls.accepts!r}; use one of {', '.join(map(repr, ACCEPTS))}")
    options = cls.Options
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        raise HandlerLoadError(f"{ref}: Options = {options!r} is not a pydantic model class")
    return cls


def import_object(ref: str, kind: str, example: str) -> object:
    """What ``module.path:name`` names, imported from ``sys.path`` (where the config's folder is).

    ``kind`` and ``example`` word the errors (HandlerLoadError) for what is expected.
    """
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr or module_name.startswith("."):
        raise HandlerLoadError(
            f"{ref!r} is not a {kind} reference: write 'module.path:{example.partition(':')[2]}' "
            f"with an absolute module path, e.g. {example!r}"
        )
    # A folder or file created since the last import (a reload after adding
    # handlers/shout.py) is invisible to the import system's directory caches.
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HandlerLoadError(
            f"cannot import module {module_name!r}: {exc}; the module must be importable "
            "from the directory that holds the config file"
        ) from None
    except Exception as exc:
        raise HandlerLoadError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    found = getattr(module, attr, None)
    if found is None:
        raise HandlerLoadError(f"module {module_name!r} has no attribute {attr!r}")
    return found


class Registry:
    """Handler names and how to load them. Entry points are read once, on first use."""

    def __init__(self, builtins: dict[str, str] | None = None, *, plugins: bool = True) -> None:
        self._sources: dict[str, tuple[str, str]] = {
            name: (ref, "built-in") for name, ref in (BUILTINS if builtins is None else builtins).items()
        }
        self._entry_points_loaded = not plugins  # plugins=False: built-ins only
        self._cache: dict[str, type[Handler]] = {}

    def register(self, name: str, cls: type[Handler]) -> None:
        """Make a Handler class available under ``name`` (tests, embedding)."""
        check_handler_class(cls, repr(cls))
        self._sources[name] = (f"{cls.__module__}:{cls.__qualname__}", "register()")
        self._cache[name] = cls

    def add_search_path(self, directory: Path) -> None:
        """Make ``module:Class`` references importable from ``directory``."""
        entry = str(directory)
        if entry not in sys.path:
            sys.path.insert(0, entry)
            importlib.invalidate_caches()

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._sources)

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            source = f"package {ep.dist.name if ep.dist else '?'}"
            if ep.name in self._sources:
                ref, other = self._sources[ep.name]
                raise HandlerLoadError(
                    f"handler name {ep.name!r} is registered twice: by {other} ({ref}) "
                    f"and by {source} ({ep.value}); uninstall one of them"
                )
            self._sources[ep.name] = (ep.value, source)

    def resolve(self, value: str) -> type[Handler]:
        """The Handler class for a name or a ``module:Class`` reference."""
        if value in self._cache:
            return self._cache[value]
        if ":" in value:
            cls = self._import(value)
        else:
            self._load_entry_points()
            if value not in self._sources:
                raise HandlerLoadError(
                    f"unknown handler {value!r};{self._suggest(value)} known handlers: {', '.join(self.names())}, "
                    "or write 'module.path:ClassName' for your own"
                )
            cls = self._import(self._sources[value][0])
        self._cache[value] = cls
        return cls

    def _suggest(self, value: str) -> str:
        """`` did you mean '...'?`` for a near-miss name or a dotted ``module.Class``; else ''."""
        module_name, dot, attr = value.rpartition(".")
        if dot and module_name and attr:
            ref = f"{module_name}:{attr}"
            try:
                self._import(ref)
            except HandlerLoadError:
                pass
            else:
                return f" did you mean {ref!r}?"
        close = difflib.get_close_matches(value, self.names(), n=1)
        return f" did you mean {close[0]!r}?" if close else ""

    @staticmethod
    def _import(ref: str) -> type[Handler]:
        return check_handler_class(import_object(ref, "handler", "handlers.shout:Shout"), ref)
