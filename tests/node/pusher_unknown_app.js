"use strict";
// pusher-js (npm pusher-js 8.6.0, its Node build) pointed at a key no wsgate `pusher`
// endpoint serves; run by tests/test_pusher_unknown_app.py as
//
//   node pusher_unknown_app.js WS_HOST WS_PORT WRONG_KEY RIGHT_KEY OTHER_KEY WATCH_MS
//
// The client with WRONG_KEY must report Pusher's error 4001 and stop: its state goes to
// "disconnected" and stays there for WATCH_MS (pusher-js retries a refused handshake after
// 0 or 1 s, so a retry would show within that window as another state change), while
// clients with RIGHT_KEY and OTHER_KEY, two apps of the same gateway, connect.
// Every state change and connection error is reported with its time in ms since the start.
// Prints one JSON report as its last line; exits 0, or 1 at a failure or at its bound.

const { Pusher, report, scenario, finish, fail, now, until, options } = require("./pusher_kit");

const { wrongKey, rightKey, otherKey, watchMs } = scenario({
  argNames: ["host", "port", "wrongKey", "rightKey", "otherKey", "watchMs"],
  fields: { wrong: { states: [], errors: [] }, right: null, other: null },
});

const client = (key) => new Pusher(key, options()); // no backend: nothing here is signed

async function connects(key) {
  const c = client(key);
  await until(`connected with ${key}`, () => c.connection.state === "connected");
  const socketId = c.connection.socket_id;
  c.disconnect();
  return { state: "connected", socketId };
}

(async () => {
  const wrong = client(wrongKey);
  report.wrong.initialState = wrong.connection.state; // the constructor has begun to connect
  wrong.connection.bind("state_change", (s) => report.wrong.states.push({ state: s.current, at: now() }));
  // What pusher-js emits for a pusher:error in the handshake: {type: "WebSocketError",
  // error: {type: "PusherError", data: {code, message}}}; kept whole.
  wrong.connection.bind("error", (e) => report.wrong.errors.push({ error: e, at: now() }));
  await until("refused", () => wrong.connection.state === "disconnected");
  const watchUntil = Date.now() + Number(watchMs);
  report.right = await connects(rightKey);
  report.other = await connects(otherKey);
  await until("watching the refused client", () => Date.now() >= watchUntil);
  report.wrong.finalState = wrong.connection.state;
  report.stage = "done";
  finish(0);
})().catch(fail);
