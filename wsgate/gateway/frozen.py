"""Read-only JSON values: the events a handler gets back from the broker's history.

The same events are handed to every connection that joins a topic, so none may change
them for the others. A ``FrozenDict`` is still a ``dict`` to ``json.dumps``.
"""

from __future__ import annotations

from typing import Any, NoReturn

__all__ = ["FrozenDict", "freeze"]


def _refused() -> TypeError:
    return TypeError("events from the broker are read-only; dict(event) is a copy you may change")


class FrozenDict(dict[str, Any]):
    """A dict that refuses every change."""

    __slots__ = ()

    def __setitem__(self, key: str, value: Any) -> NoReturn:
        raise _refused()

    def __delitem__(self, key: str) -> NoReturn:
        raise _refused()

    def __ior__(self, other: Any) -> NoReturn:  # type: ignore[misc]
        raise _refused()

    def clear(self) -> NoReturn:
        raise _refused()

    def pop(self, *args: Any) -> NoReturn:
        raise _refused()

    def popitem(self) -> NoReturn:
        raise _refused()

    def setdefault(self, *args: Any) -> NoReturn:
        raise _refused()

    def update(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise _refused()

    def __reduce__(self) -> tuple[type[FrozenDict], tuple[dict[str, Any]]]:
        return FrozenDict, (dict(self),)


def freeze(value: Any) -> Any:
    """``value`` (parsed JSON) with every dict made a FrozenDict and every list a tuple."""
    if isinstance(value, dict):
        return FrozenDict({key: freeze(item) for key, item in value.items()})
    if isinstance(value, list):
        return tuple(freeze(item) for item in value)
    return value
