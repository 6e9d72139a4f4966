"use strict";
// pusher-js (npm pusher-js, its Node build) makes the events a wsgate `pusher` endpoint
// sends as webhooks; run by tests/test_pusher_webhooks.py as
//
//   node pusher_webhooks.js WS_HOST WS_PORT BACKEND_URL KEY
//
// BACKEND_URL's POST /pusher/auth signs subscriptions with the `pusher` Python SDK. alice
// joins presence-hooks, then bob; alice sends a client event; both leave. The test reads
// the webhooks. Prints one JSON report as its last line; exits 0, or 1 at a failure.

const Pusher = require("pusher-js");

const [host, port, backend, key] = process.argv.slice(2);
const report = { stage: "start", error: null };
let finished = false;

function finish(code) {
  if (finished) return;
  finished = true;
  process.stdout.write(JSON.stringify(report) + "\n");
  process.exit(code);
}
function fail(err) {
  report.error = err && err.stack ? String(err.stack) : JSON.stringify(err);
  finish(1);
}
process.on("unhandledRejection", fail);
process.on("uncaughtException", fail);
setTimeout(() => fail(new Error(`bound reached at stage ${report.stage}`)), 15000).unref();

async function until(stage, check) {
  report.stage = stage;
  while (!check()) await new Promise((r) => setTimeout(r, 10));
}

function client(user) {
  return new Pusher(key, {
    wsHost: host, wsPort: Number(port), forceTLS: false, enabledTransports: ["ws"], disableStats: true,
    cluster: "wsgate",
    channelAuthorization: { endpoint: `${backend}/pusher/auth`, transport: "ajax", params: { user } },
  });
}

(async () => {
  const seen = { aliceIn: false, bobIn: false, bobAdded: false, waved: false };
  const alice = client("alice");
  const a = alice.subscribe("presence-hooks");
  a.bind("pusher:subscription_succeeded", () => (seen.aliceIn = true));
  a.bind("pusher:member_added", () => (seen.bobAdded = true));
  await until("alice joins", () => seen.aliceIn);
  const bob = client("bob");
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
