"use strict";
// pusher-js (npm pusher-js 8.6.0, its Node build) loses its connection to a wsgate `pusher`
// endpoint and must come back by itself; run by tests/test_pusher_reconnect.py as
//
//   node pusher_reconnect.js WS_HOST WS_PORT BACKEND_URL KEY
//
// BACKEND_URL is the test's aiohttp app: POST /pusher/auth signs subscriptions with the
// `pusher` Python SDK; POST /step/drop has the test take the connection away (restart the
// gateway, or cut the TCP connection) and answers once the gateway can be reached again;
// POST /step/trigger has the SDK trigger one "after" event on each channel. The client
// subscribes to a public, a private and a presence channel, loses its connection, and must
// reconnect, subscribe again (authorized again) and receive the events triggered after.
// Every state change and connection error is reported with its time in ms since the start.
// Prints one JSON report as its last line; exits 0, or 1 at a failure or at its bound.

const { report, scenario, finish, fail, now, until, step, connect } = require("./pusher_kit");

scenario({ boundMs: 45000, fields: { states: [], errors: [], subscribed: {}, events: [], socketIds: [] } });
const CHANNELS = ["news", "private-feed", "presence-room"];

(async () => {
  const client = connect("alice");
  client.connection.bind("state_change", (s) => {
    report.states.push({ state: s.current, at: now() });
    if (s.current === "connected") report.socketIds.push(client.connection.socket_id);
  });
  client.connection.bind("error", (e) => {
    const data = (e && e.data) || (e && e.error && e.error.data) || {};
    report.errors.push({ type: e && e.type, code: data.code === undefined ? null : data.code, at: now() });
  });
  for (const name of CHANNELS) {
    report.subscribed[name] = 0;
    const channel = client.subscribe(name);
    channel.bind("pusher:subscription_succeeded", () => (report.subscribed[name] += 1));
    channel.bind("after", (data) => report.events.push({ channel: name, data }));
  }
  const all = (n) => CHANNELS.every((c) => report.subscribed[c] >= n);
  await until("subscribed", () => all(1));

  report.dropped = await step("drop");
  report.droppedAt = now();
  await until("connected again", () => report.socketIds.length >= 2 && client.connection.state === "connected");
  await until("subscribed again", () => all(2));
  report.resubscribedAt = now();

  report.triggered = await step("trigger");
  await until("the events after", () => report.events.length >= CHANNELS.length);
  await new Promise((r) => setTimeout(r, 200)); // anything more (a duplicate) would come now
  client.disconnect();
  report.stage = "done";
  finish(0);
})().catch(fail);
