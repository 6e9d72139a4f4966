"""The README examples of pusher-js and of the ``pusher`` Python SDK, run against wsgate
with only their host and port changed.

Each example is quoted verbatim below, under the README section it comes from; the test
changes it with ``replace_once`` (the host and port options, and the placeholders the
README tells its reader to fill) and runs it: the SDK's in this process, pusher-js's in
Node (tests/node/pusher_readme.js). What one side sends, the other side checks: the
SDK's triggers are received by the pusher-js examples' channels, its queries answer
what the README shows for the channels pusher-js subscribed, its ``authenticate``
examples are the auth endpoint pusher-js calls, and ``validate_webhook`` accepts the
gateway's webhooks.

pusher-js: tests/node/node_modules/pusher-js/README.md (npm pusher-js 8.6.0, checked
below). The SDK: README.md of github.com/pusher/pusher-http-python at tag v3.3.3
(10372d07123318775dbf250ea25b79c9b9bb0bbe), the repository's newest; the wheel of the
pinned pusher 3.3.4 (constraints.txt) carries no README to check them against.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp import web
from conftest import NODE_DIR, run_node, serve_app

from wsgate.testing import run_gateway

# The SDK README's own credentials, so that its examples need no change there; APP_KEY and
# APP_CLUSTER are pusher-js's README placeholders ("If you do not specify a cluster, `mt1`
# will be used by default"). The cluster is unused once wsHost is set.
APP_ID, KEY, SECRET = "4", "key", "secret"
PLACEHOLDERS = {"APP_KEY": KEY, "APP_CLUSTER": "mt1"}
MASTER_KEY = base64.b64encode(bytes(range(32))).decode()  # README step 2: `openssl rand -base64 32`

# ---- pusher-js 8.6.0, README.md ----
JS: dict[str, str] = {
    # "Installation" > "Yarn (or NPM)"
    "require": "const Pusher = require('pusher-js');",
    # "Configuration"
    "configuration": "const pusher = new Pusher(APP_KEY, {\n  cluster: APP_CLUSTER,\n  channelAuthorization: {\n"
                     "    endpoint: 'http://example.com/pusher/auth'\n  },\n});",
    # "Default events"
    "state_change": "pusher.connection.bind('state_change', function(states) {\n"
                    "  // states = {previous: 'oldState', current: 'newState'}\n"
                    "  $('div#status').text(\"Channels current state is \" + states.current);\n});",
    # "Connection Events"
    "connected": "pusher.connection.bind('connected', callback);",
    "disconnected": "pusher.connection.bind('disconnected', callback);",
    # "Subscribing to channels" > "Public channels", "Private channels", "Encrypted Channels"
    "subscribe_public": "const channel = pusher.subscribe('my-channel');",
    "subscribe_private": "const channel = pusher.subscribe('private-my-channel');",
    "subscribe_encrypted": "const channel = pusher.subscribe('private-encrypted-my-channel');",
    # "Accessing Channels"
    "access_channel": "const channel = pusher.channel('private-my-channel');",
    "all_channels": "pusher.allChannels().forEach(channel => console.log(channel.name));",
    # "Binding to events" > "`bind` and `unbind`"
    "bind_new_message": "channel.bind('new-message', function (data) {\n  console.log(data.message);\n});",
    "bind_with_context": "channel.bind('my-event', function () {\n  console.log(`hi ${this.name}`);\n}, "
                         "{ name: 'Pusher' });",
    "bind_presence_client_event": "presenceChannel.bind('client-message', function (data, metadata) {\n"
                                  "  console.log('received data from', metadata.user_id, ':', data);\n});",
    "unbind": "// Remove just `handler` for the `new-comment` event\nchannel.unbind('new-comment', handler);\n\n"
              "// Remove all handlers for the `new-comment` event\nchannel.unbind('new-comment');\n\n"
              "// Remove `handler` for all events\nchannel.unbind(null, handler);\n\n"
              "// Remove all handlers for `context`\nchannel.unbind(null, null, context);\n\n"
              "// Remove all handlers on `channel`\nchannel.unbind();",
    # "Binding to events" > "`bind_global` and `unbind_global`"
    "bind_global": "channel.bind_global(function (event, data) {\n"
                   "  console.log(`The event ${event} was triggered with data ${data}`);\n})",
    "unbind_global": "// remove just `handler` from global bindings\nchannel.unbind_global(handler);\n\n"
                     "// remove all global bindings\nchannel.unbind_global();",
    # "Triggering Client Events"
    "trigger_client_event": "channel.trigger('client-my-event', {message: 'Hello, world!'})",
    # "Unsubscribing from channels"
    "unsubscribe_public": "pusher.unsubscribe('my-channel');",
    "unsubscribe_private": "pusher.unsubscribe('private-my-channel');",
    # "Connection"
    "disconnect": "pusher.disconnect();",
}

# ---- pusher-http-python v3.3.3, README.md ----
# "Getting started"
SDK_CLIENT = ("import pusher\n"
              "pusher_client = pusher.Pusher(app_id=u'4', key=u'key', secret=u'secret', cluster=u'cluster')")
# "Getting started"
TRIGGER = "pusher_client.trigger(u'a_channel', u'an_event', {u'some': u'data'})"
# "Triggering Events" > "`Pusher::trigger`" > "Example"
TRIGGER_MANY = ("pusher_client.trigger([u'a_channel', u'another_channel'], u'an_event', {u'some': u'data'}, "
                "\"1234.12\")")
# "Triggering Events" > "`Pusher::trigger_batch`" > "Example"
TRIGGER_BATCH = """pusher_client.trigger_batch([
  { u'channel': u'a_channel', u'name': u'an_event', u'data': {u'some': u'data'}, u'socket_id': '1234.12'},
  { u'channel': u'a_channel', u'name': u'an_event', u'data': {u'some': u'other data'}}
])"""
# "Send a message to a specific user" > "`Pusher::send_to_user`" > "Example"
SEND_TO_USER = "pusher_client.send_to_user( u'123', u'some_event', {u'message': u'hello worlds'})"
# "Querying Application State" > "Getting Information For All Channels" > "Example"
CHANNELS_INFO = """channels = pusher_client.channels_info(u"presence-", [u'user_count'])

#=> {u'channels': {u'presence-chatroom': {u'user_count': 2}, u'presence-notifications': {u'user_count': 1}}}"""
# "Querying Application State" > "Getting Information For A Specific Channel" > "Example"
CHANNEL_INFO = """channel = pusher_client.channel_info(u'presence-chatroom', [u"user_count"])
#=> {u'user_count': 42, u'occupied': True}"""
# "Querying Application State" > "Getting User Information For A Presence Channel" > "Example"
USERS_INFO = """pusher_client.users_info(u'presence-chatroom')
#=> {u'users': [{u'id': u'1035'}, {u'id': u'4821'}]}"""
# "Authenticating Channel Subscription" > "Example" > "Private Channels"
AUTH_PRIVATE = """auth = pusher_client.authenticate(

  channel=u"private-channel",

  socket_id=u"1234.12"
)
# return `auth` as a response"""
# "Authenticating Channel Subscription" > "Example" > "Presence Channels"
AUTH_PRESENCE = """auth = pusher_client.authenticate(

  channel=u"presence-channel",

  socket_id=u"1234.12",

  custom_data={
    u'user_id': u'1',
    u'user_info': {
      u'twitter': '@pusher'
    }
  }
)
# return `auth` as a response"""
# "Authenticating User" > "Example" > "User Authentication"
AUTH_USER = """auth = pusher_client.authenticate_user(
  socket_id=u"1234.12",
  user_data = {
    u'id': u'123',
    u'name': u'John Smith'
  }
)
# return `auth` as a response"""
# "Terminating user connections"
TERMINATE = "pusher_client.terminate_user_connections(userId)"
# "End to End Encryption", step 3 (indented as in the README's list)
E2E = """   import pusher

   pusher_client = pusher.Pusher(
     app_id='yourappid',
     key='yourkey',
     secret='yoursecret',
     encryption_master_key_base64='<output from command above>',
     cluster='yourclustername',
     ssl=True
   )

   pusher_client.trigger('private-encrypted-my-channel', 'my-event', {
     'message': 'hello world'
   })"""
# "Receiving Webhooks" > "`Pusher::validate_webhook`" > "Example"
VALIDATE_WEBHOOK = r"""webhook = pusher_client.validate_webhook(

  key="key_sent_in_header",

  signature="signature_sent_in_header",

  body="{ \"time_ms\": 1327078148132  \"events\": [ { \"name\": \"event_name\", \"some\": \"data\" }  ]}"
)

print webhook["events"]"""
WEBHOOK_BODY = r'"{ \"time_ms\": 1327078148132  \"events\": [ { \"name\": \"event_name\", \"some\": \"data\" }  ]}"'


def replace_once(text: str, old: str, new: str) -> str:
    """``text`` with its one ``old`` replaced by ``new`` (so a change that no longer applies fails)."""
    assert text.count(old) == 1, f"{old!r} is not once in the example:\n{text}"
    return text.replace(old, new)


def sdk_at(example: str, host: str, port: int) -> str:
    """A README constructor call pointed at wsgate: ``host=``, ``port=``, ``ssl=False`` besides ``cluster=``."""
    if "ssl=True" in example:
        return replace_once(example, "ssl=True", f"ssl=False, host={host!r}, port={port}")
    return replace_once(example, "cluster=u'cluster')", f"cluster=u'cluster', host={host!r}, port={port}, ssl=False)")


def js_at(example: str, host: str, port: int, backend: str) -> str:
    """pusher-js's options pointed at wsgate (the README's cluster kept), its auth endpoint at the backend."""
    at_wsgate = f"wsHost: '{host}', wsPort: {port}, forceTLS: false, enabledTransports: ['ws'],"
    example = replace_once(example, "cluster: APP_CLUSTER,", f"cluster: APP_CLUSTER, {at_wsgate}")
    return replace_once(example, "http://example.com", backend)


def run_py(example: str, namespace: dict[str, Any]) -> Any:
    """Run a README example in ``namespace``; the value of its last line when that is an expression."""
    tree = ast.parse(example)
    last = tree.body[-1]
    if isinstance(last, ast.Expr):
        exec(compile(ast.Module(tree.body[:-1], []), "<README>", "exec"), namespace)
        return eval(compile(ast.Expression(last.value), "<README>", "eval"), namespace)
    exec(compile(tree, "<README>", "exec"), namespace)
    return None


def test_the_quoted_pusher_js_examples_are_in_its_readme() -> None:
    readme = (NODE_DIR / "node_modules" / "pusher-js" / "README.md").read_text()
    missing = [name for name, example in JS.items() if example not in readme]
    assert not missing, f"not verbatim in pusher-js's README: {missing}"


def test_the_webhook_example_is_python_2() -> None:
    """The README's last line, ``print webhook["events"]``, is Python 2: it is run as ``print(...)``."""
    try:
        ast.parse(VALIDATE_WEBHOOK)
    except SyntaxError:
        pass
    else:
        raise AssertionError("the validate_webhook example parses now: run it unchanged")


class Backend:
    """The app's server side, written with the SDK README's examples: the auth endpoints
    pusher-js calls, a webhook receiver, and the steps the Node scenario asks for."""

    def __init__(self) -> None:
        self.sdk: dict[str, Any] = {}  # the Getting started example's namespace
        self.e2e: dict[str, Any] = {}  # the End to End Encryption example's
        self.e2e_trigger = ""
        self.webhooks: list[dict[str, Any]] = []
        self.webhook_came = asyncio.Event()

    def point_at(self, host: str, port: int) -> None:
        run_py(sdk_at(SDK_CLIENT, host, port), self.sdk)
        e2e = textwrap.dedent(E2E)
        for placeholder, value in (("yourappid", APP_ID), ("yourkey", KEY), ("yoursecret", SECRET),
                                   ("<output from command above>", MASTER_KEY)):
            e2e = replace_once(e2e, placeholder, value)
        constructor, self.e2e_trigger = e2e.rsplit("\n\n", 1)
        run_py(sdk_at(constructor, host, port), self.e2e)

    async def auth(self, request: web.Request) -> web.Response:
        form = parse_qs(await request.text())
        channel, socket_id = form["channel_name"][0], form["socket_id"][0]
        # The README's channel and socket_id are what pusher-js POSTs ("sent to you in the POST request").
        if channel.startswith("presence-"):
            example = replace_once(AUTH_PRESENCE, 'u"presence-channel"', repr(channel))
        else:
            example = replace_once(AUTH_PRIVATE, 'u"private-channel"', repr(channel))
        namespace = self.e2e if channel.startswith("private-encrypted-") else self.sdk
        run_py(replace_once(example, 'u"1234.12"', repr(socket_id)), namespace)
        # The SDK gives an encrypted channel's shared_secret as bytes, which JSON cannot carry.
        auth = {k: v.decode() if isinstance(v, bytes) else v for k, v in namespace["auth"].items()}
        return web.json_response(auth)

    async def user_auth(self, request: web.Request) -> web.Response:
        socket_id = parse_qs(await request.text())["socket_id"][0]
        run_py(replace_once(AUTH_USER, 'u"1234.12"', repr(socket_id)), self.sdk)
        return web.json_response(self.sdk["auth"])

    async def webhook(self, request: web.Request) -> web.Response:
        example = replace_once(VALIDATE_WEBHOOK, 'print webhook["events"]', 'print(webhook["events"])')
        for placeholder, value in (('"key_sent_in_header"', request.headers["X-Pusher-Key"]),
                                   ('"signature_sent_in_header"', request.headers["X-Pusher-Signature"]),
                                   (WEBHOOK_BODY, await request.text())):
            example = replace_once(example, placeholder, repr(value))
        run_py(example, self.sdk)
        assert self.sdk["webhook"] is not None, "validate_webhook refused the gateway's webhook"
        self.webhooks.extend(self.sdk["webhook"]["events"])
        self.webhook_came.set()
        return web.json_response({})

    async def step(self, request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(self.run_step, request.match_info["name"]))

    def run_step(self, name: str) -> Any:
        sdk = self.sdk["pusher_client"]
        if name == "app_events":  # the app's events on the README's my-channel
            return [sdk.trigger("my-channel", "new-message", {"message": "hello from the app"}),
                    sdk.trigger("my-channel", "my-event", {})]
        if name == "sdk_triggers":
            return [run_py(TRIGGER, self.sdk), run_py(TRIGGER_MANY, self.sdk), run_py(TRIGGER_BATCH, self.sdk),
                    run_py(self.e2e_trigger, self.e2e)]
        if name == "sdk_queries":
            return {"users": run_py(USERS_INFO, self.sdk), "channels": (run_py(CHANNELS_INFO, self.sdk),
                                                                        self.sdk["channels"])[1],
                    "channel": (run_py(CHANNEL_INFO, self.sdk), self.sdk["channel"])[1]}
        if name == "send_to_user":
            return run_py(SEND_TO_USER, self.sdk)
        if name == "terminate":
            return run_py(TERMINATE, {**self.sdk, "userId": "123"})
        if name == "sentinel":
            return sdk.trigger("a_channel", "sentinel", {})
        if name == "after_unsubscribe":  # the unsubscribes reach the gateway on another socket: wait for them
            for _ in range(100):
                seen = [sdk.channel_info("my-channel", ["subscription_count"]),
                        sdk.channel_info("private-my-channel", ["subscription_count"])]
                if seen[0]["subscription_count"] == 0 and seen[1]["subscription_count"] == 1:
                    break
            return seen
        raise AssertionError(f"no step {name}")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/pusher/auth", self.auth)
        app.router.add_post("/pusher/user-auth", self.user_auth)
        app.router.add_post("/webhooks", self.webhook)
        app.router.add_post("/step/{name}", self.step)
        return app


async def test_the_readme_examples_of_pusher_js_and_the_sdk_work_against_wsgate(tmp_path: Path) -> None:
    backend = Backend()
    async with serve_app(backend.app()) as backend_url:
        options = {"app_id": APP_ID, "key": KEY, "secret": SECRET, "client_events": True,
                   "webhooks": {"url": f"{backend_url}/webhooks", "batch": "20ms",
                                "events": ["channel_occupied", "member_added"]}}
        async with run_gateway({f"/app/{KEY}": {"handler": "pusher", "origins": "*", "options": options}}) as gw:
            host, port = str(urlsplit(gw.url).hostname), int(urlsplit(gw.url).port or 0)
            backend.point_at(host, port)
            snippets = {name: js_at(example, host, port, backend_url) if name == "configuration" else example
                        for name, example in JS.items()}
            # The client that signs in, which pusher-js's README does not show.
            glue = {"wsHost": host, "wsPort": port, "forceTLS": False, "enabledTransports": ["ws"],
                    "cluster": PLACEHOLDERS["APP_CLUSTER"],
                    "userAuthentication": {"endpoint": f"{backend_url}/pusher/user-auth"}}
            path = tmp_path / "snippets.json"
            path.write_text(json.dumps({"placeholders": PLACEHOLDERS, "snippets": snippets, "glueOptions": glue}))
            report = await run_node("pusher_readme.js", backend_url, str(path), within=12)
            async with asyncio.timeout(5):
                while not {("channel_occupied", "my-channel"), ("member_added", "presence-chatroom")} <= {
                        (e["name"], e["channel"]) for e in backend.webhooks}:
                    backend.webhook_came.clear()
                    await backend.webhook_came.wait()
    assert report["error"] is None, report
    assert report["stage"] == "done", report
    # pusher-js is connecting once constructed, before the example's state_change is bound.
    assert report["status"] == [["div#status", f"Channels current state is {s}"] for s in ("connected", "disconnected")]
    assert report["accessed"] is True
    assert report["allChannels"] == ["my-channel", "private-my-channel", "private-encrypted-my-channel",
                                     "a_channel", "another_channel", "presence-chatroom"]
    logs = report["logs"]  # what the examples bound on my-channel and presence-chatroom printed
    assert "The event pusher:subscription_succeeded was triggered with data [object Object]" in logs
    assert "received data from 1 : {\"text\":\"hi from the peer\"}" in logs
    assert "hello from the app" in logs
    assert "hi Pusher" in logs
    assert "The event new-message was triggered with data [object Object]" in logs
    assert "The event my-event was triggered with data [object Object]" in logs
    assert report["loggedAfterUnbind"] == []
    # The SDK's README triggers as pusher-js received them, the encrypted one decrypted.
    # `trigger_batch`: "An empty dict on success"; `trigger` too, as Pusher's HTTP API answers
    # (the README's "includes the event_id" dates from Pusher's event buffer, in its docs since 1.0.0).
    assert report["triggers"] == [{}, {}, {}, {}]
    received = sorted((e["channel"], e["event"], json.dumps(e["data"])) for e in report["received"]
                      if not e["event"].startswith("pusher:"))
    assert received == [("a_channel", "an_event", '{"some": "data"}')] * 3 + [
        ("a_channel", "an_event", '{"some": "other data"}'), ("a_channel", "sentinel", "{}"),
        ("another_channel", "an_event", '{"some": "data"}'),
        ("private-encrypted-my-channel", "my-event", '{"message": "hello world"}')]
    client_events = [e for e in report["peerEvents"] if not e["event"].startswith("pusher:")]
    assert client_events == [{"channel": "private-my-channel", "event": "client-my-event",
                              "data": {"message": "Hello, world!"}}]
    # The README's shapes, for the one user (id 1, two connections) pusher-js put in presence-chatroom.
    assert report["queries"] == {"users": {"users": [{"id": "1"}]},
                                 "channels": {"channels": {"presence-chatroom": {"user_count": 1}}},
                                 "channel": {"user_count": 1, "occupied": True}}
    assert report["sentToUser"] == {}
    assert report["userEvents"] == [{"message": "hello worlds"}]
    assert report["terminated"] == {}
    # the pusher:error first, then the close: pusher-js does not reconnect after 4009
    assert report["userErrors"][0] == {"type": "PusherError",
                                       "data": {"code": 4009, "message": "You got disconnected by the app"}}
    assert report["userStates"] == ["connected", "disconnected"]
    assert report["afterUnsubscribe"] == [{"occupied": False, "subscription_count": 0},
                                          {"occupied": True, "subscription_count": 1}]
    assert report["connected"] == 1
    assert report["disconnected"] == 1
