"""The demo shop: a login, a page that connects to wsgate, orders published with cent, and the proxy views."""

import itertools
import json
import threading
import time
from typing import Any

import jwt
from cent import Client, PublishRequest
from django.conf import settings
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

# Demo users instead of a user table; staff may read the `staff` channel.
USERS = {"alice": {"staff": False}, "bob": {"staff": True}}

# One cent client (one HTTP connection pool) for the whole process.
channels = Client(settings.WSGATE_API_URL, api_key=settings.WSGATE_API_KEY, timeout=5)

_order_ids = itertools.count(1)
_orders: dict[str, list[dict[str, Any]]] = {}
_orders_lock = threading.Lock()  # gunicorn threads share these


def current_user(request: HttpRequest) -> str | None:
    user = request.session.get("user")
    return user if user in USERS else None


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    user = current_user(request)
    if user is None:
        return render(request, "shop/login.html", {"users": sorted(USERS)})
    return render(request, "shop/index.html", {"user": user, "channels": {"url": settings.WSGATE_WS_URL, "user": user}})


@require_POST
def login(request: HttpRequest) -> HttpResponse:
    user = request.POST.get("user", "")
    if user not in USERS:
        return HttpResponseBadRequest("unknown user")
    request.session.cycle_key()
    request.session["user"] = user
    return redirect("index")


@require_POST
def logout(request: HttpRequest) -> HttpResponse:
    request.session.flush()
    return redirect("index")


@require_GET
def connection_token(request: HttpRequest) -> HttpResponse:
    """A connection token for centrifuge-js's ``getToken``: HS256 with the gateway's jwt secret."""
    user = current_user(request)
    if user is None:
        return JsonResponse({"error": "log in first"}, status=403)
    claims = {"sub": user, "exp": int(time.time()) + settings.WSGATE_TOKEN_TTL}
    return JsonResponse({"token": jwt.encode(claims, settings.WSGATE_TOKEN_SECRET, algorithm="HS256")})


@require_POST
def place_order(request: HttpRequest) -> HttpResponse:
    """Save an order, then tell the user's pages (``orders#<user>``) and everyone (``news``)."""
    user = current_user(request)
    if user is None:
        return JsonResponse({"error": "log in first"}, status=403)
    item = request.POST.get("item", "").strip()[:100]
    if not item:
        return JsonResponse({"error": "item is required"}, status=400)
    with _orders_lock:
        order = {"id": next(_order_ids), "item": item, "status": "placed"}
        _orders.setdefault(user, []).append(order)
    # `orders#alice` is user-limited: only alice's connections may subscribe to it.
    channels.publish(PublishRequest(channel=f"orders#{user}", data=order))
    channels.publish(PublishRequest(channel="news", data={"text": f"order #{order['id']} placed"}))
    return JsonResponse(order, status=201)


@require_GET
def centrifuge_js(request: HttpRequest) -> HttpResponse:
    try:
        return FileResponse(settings.CENTRIFUGE_JS.open("rb"), content_type="text/javascript")
    except FileNotFoundError:
        raise Http404("centrifuge.js not found: set CENTRIFUGE_JS (see README.md)") from None


# --- the proxy: wsgate POSTs here and does what these views answer ---------------------------
# wsgate has already checked the connection token, so `user` in the body is the user it
# verified. These URLs must be reachable by wsgate only (not routed by the public proxy):
# anyone who can POST to them can claim any user.


def _proxy_body(request: HttpRequest) -> dict[str, Any] | None:
    try:
        body = json.loads(request.body)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


@csrf_exempt
@require_POST
def subscribe_proxy(request: HttpRequest) -> HttpResponse:
    """Who may subscribe to channels of namespaces with ``subscribe: proxy``."""
    body = _proxy_body(request)
    if body is None:
        return HttpResponseBadRequest()
    user, channel = body.get("user", ""), body.get("channel")
    if channel == "news" and user:
        return JsonResponse({"result": {}})
    if channel == "staff" and USERS.get(user, {}).get("staff"):
        return JsonResponse({"result": {"data": {"welcome": user}}})
    return JsonResponse({"error": {"code": 103, "message": "permission denied"}})


@csrf_exempt
@require_POST
def rpc_proxy(request: HttpRequest) -> HttpResponse:
    """Every ``centrifuge.rpc(method, data)`` of a page."""
    body = _proxy_body(request)
    if body is None:
        return HttpResponseBadRequest()
    user = body.get("user", "")
    if body.get("method") == "whoami" and user in USERS:
        with _orders_lock:
            count = len(_orders.get(user, []))
        return JsonResponse({"result": {"data": {"user": user, "staff": USERS[user]["staff"], "orders": count}}})
    return JsonResponse({"error": {"code": 104, "message": "method not found"}})
