"""Comparison: the `websockets` library, echo on /ws and broadcast on /chat."""

import argparse
import asyncio
import contextlib
import signal
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

CHAT: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        await dispatch(ws)


async def dispatch(ws: ServerConnection) -> None:
    path = urlsplit(ws.request.path if ws.request else "/").path
    if path == "/ws":
        async for message in ws:
            await ws.send(message)
    elif path == "/chat":
        CHAT.add(ws)
        try:
            async for message in ws:
                broadcast(CHAT, message)
        finally:
            CHAT.discard(ws)
    else:
        await ws.close(1008, "unknown path")


async def serve_forever(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set_result, None)
    async with serve(handler, host, port):
        await stop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve_forever(args.host, args.port))
    else:
        uvloop.run(serve_forever(args.host, args.port))


if __name__ == "__main__":
    main()
