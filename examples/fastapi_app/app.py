"""The demo shop on FastAPI: a login, a page that connects to wsgate, orders published with
the async cent client, and the proxy routes that wsgate calls.

Run with ``uvicorn app:app`` (see README.md). Nothing is stored on disk: the session lives
in a signed cookie, the users are a fixed demo list and the orders are kept in memory.
"""

import html
import itertools
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import jwt
from cent import AsyncClient, PublishRequest
from fastapi import Body, FastAPI, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from starlette.middleware.sessions import SessionMiddleware

HERE = Path(__file__).resolve().parent

# The gateway. The token secret is the one of the `auth:` jwt authenticator that the
# channels endpoint names in `token_auth`; the API key is the endpoint's `api_key`.
WSGATE_URL = os.environ.get("WSGATE_URL", "http://127.0.0.1:8080").rstrip("/")
WSGATE_ENDPOINT = "/connection/websocket"
WSGATE_API_URL = f"{WSGATE_URL}{WSGATE_ENDPOINT}/api"
WSGATE_WS_URL = WSGATE_URL.replace("http", "ws", 1) + WSGATE_ENDPOINT
WSGATE_TOKEN_SECRET = os.environ.get("WSGATE_TOKEN_SECRET", "")
WSGATE_API_KEY = os.environ.get("WSGATE_API_KEY", "")
TOKEN_TTL = 600  # seconds; centrifuge-js asks /connection-token again before it runs out
SESSION_SECRET = os.environ.get("SESSION_SECRET", "demo-only-change-me-demo-only-change-me")
# The browser build of centrifuge-js (npm package `centrifuge`), served by the app itself.
CENTRIFUGE_JS = Path(os.environ.get(
    "CENTRIFUGE_JS", HERE.parent.parent / "tests" / "node" / "node_modules" / "centrifuge" / "dist" / "centrifuge.js"))

# Demo users instead of a user table; staff may read the `staff` channel.
USERS = {"alice": {"staff": False}, "bob": {"staff": True}}

_order_ids = itertools.count(1)
_orders: dict[str, list[dict[str, Any]]] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One cent client (one aiohttp session) for the process, made inside the event loop.
    app.state.channels = AsyncClient(WSGATE_API_URL, api_key=WSGATE_API_KEY, timeout=5)
    try:
        yield
    finally:
        await app.state.channels.close()


app = FastAPI(lifespan=lifespan)
app.add_middleware(SessionMiddleware, secret_key=SESSION_SECRET, same_site="lax", https_only=False)


def current_user(request: Request) -> str | None:
    user = request.session.get("user")
    return user if user in USERS else None


PAGES = {name: (HERE / name).read_text() for name in ("login.html", "index.html")}


def page(name: str, **values: str) -> HTMLResponse:
    text = PAGES[name]
    for key, value in values.items():
        text = text.replace("{{ " + key + " }}", value)
    return HTMLResponse(text)


def script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@app.get("/", response_class=HTMLResponse)
async def index(request: Request) -> HTMLResponse:
    user = current_user(request)
    if user is None:
        options = "".join(f"<option>{html.escape(name)}</option>" for name in sorted(USERS))
        return page("login.html", options=options)
    return page("index.html", user=html.escape(user), config=script_json({"url": WSGATE_WS_URL, "user": user}))


@app.post("/login")
async def login(request: Request, user: Annotated[str, Form()]) -> RedirectResponse:
    if user not in USERS:
        raise HTTPException(400, "unknown user")
    request.session.clear()
    request.session["user"] = user
    return RedirectResponse("/", status_code=303)


@app.post("/logout")
async def logout(request: Request) -> RedirectResponse:
    request.session.clear()
    return RedirectResponse("/", status_code=303)


@app.get("/connection-token")
async def connection_token(request: Request) -> JSONResponse:
    """A connection token for centrifuge-js's ``getToken``: HS256 with the gateway's jwt secret."""
    user = current_user(request)
    if user is None:
        return JSONResponse({"error": "log in first"}, status_code=403)
    claims = {"sub": user, "exp": int(time.time()) + TOKEN_TTL}
    return JSONResponse({"token": jwt.encode(claims, WSGATE_TOKEN_SECRET, algorithm="HS256")})


@app.post("/orders", status_code=201)
async def place_order(request: Request, item: Annotated[str, Form(max_length=100)]) -> dict[str, Any]:
    """Save an order, then tell the user's pages (``orders#<user>``) and everyone (``news``)."""
    user = current_user(request)
    if user is None:
        raise HTTPException(403, "log in first")
    if not item.strip():
        raise HTTPException(400, "item is required")
    order = {"id": next(_order_ids), "item": item.strip(), "status": "placed"}
    _orders.setdefault(user, []).append(order)
    channels: AsyncClient = request.app.state.channels
    # `orders#alice` is user-limited: only alice's connections may subscribe to it.
    await channels.publish(PublishRequest(channel=f"orders#{user}", data=order))
    await channels.publish(PublishRequest(channel="news", data={"text": f"order #{order['id']} placed"}))
    return order


@app.get("/centrifuge.js")
def centrifuge_js() -> FileResponse:  # sync: FastAPI runs it in a thread, as it touches the disk
    if not CENTRIFUGE_JS.is_file():
        raise HTTPException(404, "centrifuge.js not found: set CENTRIFUGE_JS (see README.md)")
    return FileResponse(CENTRIFUGE_JS, media_type="text/javascript")


# --- the proxy: wsgate POSTs here and does what these routes answer --------------------------
# wsgate has already checked the connection token, so `user` in the body is the user it
# verified. These URLs must be reachable by wsgate only (not routed by the public proxy):
# anyone who can POST to them can claim any user.


@app.post("/centrifugo/subscribe")
async def subscribe_proxy(body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    """Who may subscribe to channels of namespaces with ``subscribe: proxy``."""
    user, channel = body.get("user", ""), body.get("channel")
    if channel == "news" and user:
        return {"result": {}}
    if channel == "staff" and USERS.get(user, {}).get("staff"):
        return {"result": {"data": {"welcome": user}}}
    return {"error": {"code": 103, "message": "permission denied"}}


@app.post("/centrifugo/rpc")
async def rpc_proxy(body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    """Every ``centrifuge.rpc(method, data)`` of a page."""
    user = body.get("user", "")
    if body.get("method") == "whoami" and user in USERS:
        return {"result": {"data": {"user": user, "staff": USERS[user]["staff"], "orders": len(_orders.get(user, []))}}}
    return {"error": {"code": 104, "message": "method not found"}}
