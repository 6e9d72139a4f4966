"""Baseline: a bare aiohttp echo (/ws) and naive broadcast (/chat) server."""

import argparse
import asyncio
import contextlib

from aiohttp import WSMsgType, web

CHAT: set[web.WebSocketResponse] = set()


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def chat(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    CHAT.add(ws)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                for peer in list(CHAT):
                    with contextlib.suppress(ConnectionError):
                        await peer.send_str(msg.data)
    finally:
        CHAT.discard(ws)
    return ws


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    app = web.Application()
    app.add_routes([web.get("/ws", echo), web.get("/chat", chat)])
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, loop=loop)


if __name__ == "__main__":
    main()
