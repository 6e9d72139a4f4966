"""Comparison: picows, a WebSocket library written in Cython: echo (/ws) and naive broadcast (/chat).

Frames are handled in picows's data callback, with no task or future per message: the
fastest a Python server on asyncio gets. Not a dependency of wsgate; the bench runs it
when picows is importable (``pip install picows``).
"""

import argparse
import asyncio

from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

CHAT: set[WSTransport] = set()


def _closed(transport: WSTransport, frame: WSFrame) -> None:
    transport.send_close(frame.get_close_code())
    transport.disconnect()


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            transport.send(frame.msg_type, frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.CLOSE:
            _closed(transport, frame)


class Chat(WSListener):
    def on_ws_connected(self, transport: WSTransport) -> None:
        CHAT.add(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        CHAT.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            payload = frame.get_payload_as_bytes()
            for peer in CHAT:
                peer.send(WSMsgType.TEXT, payload)
        elif frame.msg_type == WSMsgType.CLOSE:
            _closed(transport, frame)


def listener(request: WSUpgradeRequest) -> WSListener | None:
    path = request.path.decode() if isinstance(request.path, bytes) else str(request.path)
    route = path.split("?", 1)[0]
    if route == "/ws":
        return Echo()
    if route == "/chat":
        return Chat()
    return None  # 404


async def serve(host: str, port: int) -> None:
    server = await ws_create_server(listener, host, port, max_frame_size=1 << 20)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    except ImportError:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
