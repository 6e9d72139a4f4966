"""Calls into redis-py methods whose annotations differ between its releases.

redis-py 8 annotates ``PubSub.aclose``, ``PubSub.connect`` and
``ConnectionPool.make_connection``; earlier releases leave them unannotated. A
``type: ignore`` is right for one and an error (unused ignore) for the other, so these
calls go through :func:`untyped`, which checks the same under every release.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["untyped"]


def untyped(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` as a callable that mypy treats as annotated, whatever redis-py says."""
    return method
