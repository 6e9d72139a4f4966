"use strict";
// pusher-js (npm pusher-js, its Node build) makes the events a wsgate `pusher` endpoint
// sends as webhooks; run by tests/test_pusher_webhooks.py as
//
//   node pusher_webhooks.js WS_HOST WS_PORT BACKEND_URL KEY
//
// BACKEND_URL's POST /pusher/auth signs subscriptions with the `pusher` Python SDK. alice
// joins presence-hooks, then bob; alice sends a client event; both leave. The test reads
// the webhooks. Prints one JSON report as its last line; exits 0, or 1 at a failure.

const { report, scenario, finish, fail, until, connect } = require("./pusher_kit");

scenario({ boundMs: 15000 });

(async () => {
  const seen = { aliceIn: false, bobIn: false, bobAdded: false, waved: false };
  const alice = connect("alice");
  const a = alice.subscribe("presence-hooks");
  a.bind("pusher:subscription_succeeded", () => (seen.aliceIn = true));
  a.bind("pusher:member_added", () => (seen.bobAdded = true));
  await until("alice joins", () => seen.aliceIn);
  const bob = connect("bob");
  const b = bob.subscribe("presence-hooks");
  b.bind("pusher:subscription_succeeded", () => (seen.bobIn = true));
  b.bind("client-wave", () => (seen.waved = true));
  await until("bob joins", () => seen.bobIn && seen.bobAdded);
  report.alice = alice.connection.socket_id;
  a.trigger("client-wave", { to: "bob" });
  await until("the wave", () => seen.waved);
  bob.disconnect();
  alice.disconnect();
  await new Promise((r) => setTimeout(r, 200));
  report.stage = "done";
  finish(0);
})().catch(fail);
