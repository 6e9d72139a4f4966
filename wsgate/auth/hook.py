"""Authenticating with the user's own coroutine, ``python: module.path:function``.

::

    async def check(handshake: Handshake) -> Identity | None:
        ...                       # return an Identity, None to refuse, or raise Refuse

The module is imported from the folder that holds config.yaml, as handlers are.
"""

from __future__ import annotations

import inspect
import sys
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from ..config.registry import import_object
from ..errors import HandlerLoadError
from .identity import AuthFailure, FailureReason, Handshake, Identity, Refuse, redact

__all__ = ["HookFunction", "PythonHook"]

HookFunction = Callable[[Handshake], Awaitable[Identity | None]]


def _import(ref: str, base: Path) -> object:
    entry = str(base)
    if entry not in sys.path:  # importable from the config's folder, as handlers are
        sys.path.insert(0, entry)
    try:
        return import_object(ref, "function", "auth:check")
    except HandlerLoadError as exc:
        raise ValueError(str(exc)) from None


def _is_async_callable(obj: object) -> bool:
    return inspect.iscoroutinefunction(obj) or (
        callable(obj) and inspect.iscoroutinefunction(getattr(obj, "__call__", None))  # noqa: B004
    )


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""


class PythonHook:
    """A ``python:`` authenticator: calls ``async def function(handshake)``.

    Returning an Identity admits, None refuses with 401, ``raise Refuse(status, reason)``
    refuses with that status. Any other exception, or any other return value, refuses
    with 503: a broken hook must fail closed.
    """

    def __init__(self, ref: str, base: Path) -> None:
        function = _import(ref, base)
        if not _is_async_callable(function):
            raise ValueError(f"{ref!r} is not an async function: write 'async def {ref.partition(':')[2]}(handshake)'")
        self.ref = ref
        self._function = cast(HookFunction, function)

    async def check(self, handshake: Handshake) -> Identity:
        """The hook's verdict on ``handshake``: an Identity, or AuthFailure."""
        try:
            result: Any = await self._function(handshake)
        except Refuse as refusal:
            reason: FailureReason = "forbidden" if refusal.status == 403 else "invalid"
            raise AuthFailure(
                refusal.status, reason, redact(f"refused by {self.ref}: {refusal.reason}", handshake.token),
                body=redact(refusal.reason, handshake.token),
            ) from None
        except Exception as exc:
            # The message is the hook author's text and may quote the token; only a
            # redacted summary and the raising line are kept.
            raise AuthFailure(
                503, "backend_error",
                redact(f"{self.ref} raised {type(exc).__name__}{_where(exc)}: {exc}", handshake.token),
            ) from None
        if result is None:
            raise AuthFailure(401, "invalid", f"refused by {self.ref} (returned None)")
        if not isinstance(result, Identity) or not isinstance(result.user, str) or not result.user:
            raise AuthFailure(
                503, "backend_error",
                f"{self.ref} returned {type(result).__name__}, expected an Identity with a user, or None",
            )
        return result

    async def close(self) -> None:
        """Nothing to release; present so every authenticator closes the same way."""
