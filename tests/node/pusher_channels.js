"use strict";
// pusher-js (npm pusher-js 8.6.0, its Node build) against a wsgate `pusher` endpoint, run by
// tests/test_pusher_js.py as
//
//   node pusher_channels.js WS_HOST WS_PORT BACKEND_URL KEY
//
// BACKEND_URL is the test's aiohttp app: POST /pusher/auth signs subscriptions with the
// `pusher` Python SDK's own authenticate(), as an application's auth view does (it refuses
// channels named private-forbidden-*), and POST /step/NAME has the test trigger events with
// the `pusher` SDK. Two clients, alice and bob: public, private and presence channels,
// events from the SDK, a client event, member added and removed, a refused subscription,
// and an end-to-end encrypted channel whose events wsgate relays without reading them.
// Prints one JSON report as its last line; exits 0, or 1 at a failure or at its bound.

const nacl = require("tweetnacl"); // pusher-js's own dependency: decrypts private-encrypted- channels
const { report, scenario, finish, fail, until, step, client: kitClient, has } = require("./pusher_kit");

scenario({ fields: { alice: { events: [] }, bob: { events: [] } } });

// Members by id and info, a presence channel's members when subscribed, a refusal's status.
function describe(channel, event, data) {
  if (event.startsWith("pusher:member")) {
    return { channel: channel.name, event, member: data && data.id, info: data && data.info };
  } else if (event === "pusher:subscription_succeeded") {
    const entry = { channel: channel.name, event };
    if (channel.members) {
      entry.count = channel.members.count;
      entry.me = channel.members.me;
      entry.ids = Object.keys(channel.members.members).sort();
    }
    return entry;
  } else if (event === "pusher:subscription_error") {
    return { channel: channel.name, event, status: data.status, type: data.type };
  }
  return { channel: channel.name, event, data };
}

// The report holds "errors" only where there were some.
const client = (name) => kitClient(name, { options: { nacl }, describe, record: { events: [], states: [] } });

(async () => {
  const alice = client("alice");
  await until("alice connected", () => alice.pusher.connection.state === "connected");
  report.alice.socketId = alice.pusher.connection.socket_id;
  alice.sub("news");
  const alicePrivate = alice.sub("private-room");
  alice.sub("presence-lobby");
  alice.sub("private-forbidden-x");
  alice.sub("private-encrypted-vault");
  await until("alice subscribed", () => ["news", "private-room", "presence-lobby", "private-encrypted-vault"].every(
    (c) => has(alice.record, { channel: c, event: "pusher:subscription_succeeded" })));
  await until("alice refused", () => has(alice.record, { channel: "private-forbidden-x", event: "pusher:subscription_error" }));

  const bob = client("bob");
  const bobPrivate = bob.sub("private-room");
  bob.sub("presence-lobby");
  await until("bob subscribed", () => ["private-room", "presence-lobby"].every(
    (c) => has(bob.record, { channel: c, event: "pusher:subscription_succeeded" })));
  await until("alice sees bob join", () => has(alice.record, { event: "pusher:member_added", member: "bob" }));

  report.triggered = await step("trigger", { socket_id: report.alice.socketId });
  await until("bob gets the SDK's events", () => has(bob.record, { channel: "private-room", event: "greet" })
    && has(bob.record, { channel: "presence-lobby", event: "greet" }));
  await until("alice gets the public one", () => has(alice.record, { channel: "news", event: "greet" }));
  await until("alice decrypts the encrypted one", () => has(alice.record, { channel: "private-encrypted-vault",
                                                                           event: "secret" }));

  report.alice.clientTriggered = alicePrivate.trigger("client-typing", { who: "alice" });
  await until("bob gets alice's client event", () => has(bob.record, { event: "client-typing" }));
  bobPrivate.trigger("client-typing", { who: "bob" });
  await until("alice gets bob's client event", () => has(alice.record, { event: "client-typing" }));

  report.info = await step("info");
  bob.pusher.disconnect();
  await until("alice sees bob leave", () => has(alice.record, { event: "pusher:member_removed", member: "bob" }));
  report.after = await step("info");
  alice.pusher.disconnect();
  report.stage = "done";
  finish(0);
})().catch(fail);
