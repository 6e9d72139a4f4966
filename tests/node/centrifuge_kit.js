"use strict";
// What the centrifuge_*.js scenarios share. Each scenario is run by tests/test_channels_js.py as
//
//   node centrifuge_NAME.js WS_URL BACKEND_URL [PARAMS_JSON]
//
// WS_URL is the channels endpoint of a real wsgate; BACKEND_URL is the test's own aiohttp
// app, which mints tokens (POST /token, /subtoken, as an application's getToken would ask)
// and carries out steps the scenario cannot do itself (POST /step/NAME: the test publishes
// or disconnects through the server API, then answers). A scenario prints one JSON report
// as its last line and exits 0, or 1 (with the report so far) on a failure or at its bound.

const WebSocket = require("ws");
const { Centrifuge } = require("centrifuge");

const [wsUrl, backendUrl, paramsJson] = process.argv.slice(2);
if (!wsUrl || !backendUrl) throw new Error("usage: node centrifuge_NAME.js WS_URL BACKEND_URL [PARAMS_JSON]");
const params = JSON.parse(paramsJson || "{}");
const report = { stage: "start", error: null };
let finished = false;
let recording = true;

// The scenario's own disconnect at its end is no event to report.
function quiet() {
  recording = false;
}

function recorder(list, map) {
  return (ctx) => {
    if (recording) list.push(map(ctx));
  };
}

function finish(exitCode) {
  if (finished) return;
  finished = true;
  process.stdout.write(JSON.stringify(report) + "\n");
  process.exit(exitCode);
}

function fail(err) {
  report.error = err && err.stack ? String(err.stack) : JSON.stringify(err);
  finish(1);
}

process.on("unhandledRejection", fail);
process.on("uncaughtException", fail);

// Stops the scenario at its bound, whatever it waits for.
function bound(ms) {
  setTimeout(() => fail(new Error(`bound of ${ms} ms reached at stage ${report.stage}`)), ms).unref();
}

// A `ws` WebSocket that keeps every frame the client sends and receives, so that a
// scenario can show what went over the wire (the refresh command, the recover fields).
function spyingWebSocket(wire) {
  return class SpyingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      wire.opened += 1;
      this.on("message", (data) => wire.received.push(String(data)));
    }

    send(data, ...rest) {
      wire.sent.push(String(data));
      return super.send(data, ...rest);
    }
  };
}

function newWire() {
  return { opened: 0, sent: [], received: [] };
}

// The commands of one kind the client sent, parsed, across all frames.
function commands(wire, kind) {
  const found = [];
  for (const frame of wire.sent) {
    for (const line of frame.split("\n")) {
      if (!line.trim()) continue;
      const command = JSON.parse(line);
      if (kind in command) found.push(command);
    }
  }
  return found;
}

async function post(path, body) {
  const response = await fetch(backendUrl + path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body || {}),
    signal: AbortSignal.timeout(5000),
  });
  if (response.status !== 200) throw new Error(`${path}: HTTP ${response.status} ${await response.text()}`);
  return response.json();
}

function step(name, body) {
  return post("/step/" + name, body);
}

async function until(what, predicate, ms = 5000) {
  report.stage = what;
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`waited ${ms} ms for: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// A client that records its own connection events in `log`.
function newClient(options, log) {
  const client = new Centrifuge(wsUrl, { websocket: spyingWebSocket(log.wire), name: "node-test", ...options });
  log.connected = [];
  log.connecting = [];
  log.disconnected = [];
  log.errors = [];
  // Code 0 is the scenario's own connect(): only the server's doings are kept.
  client.on("connected", recorder(log.connected, (ctx) => ({ client: ctx.client, transport: ctx.transport, data: ctx.data })));
  client.on("connecting", (ctx) => ctx.code !== 0 && recorder(log.connecting, codeOf)(ctx));
  client.on("disconnected", recorder(log.disconnected, codeOf));
  client.on("error", recorder(log.errors, errorOf));
  return client;
}

// A subscription that records its events in `log`.
function newSubscription(client, channel, options, log) {
  const sub = client.newSubscription(channel, options || {});
  log.subscribed = [];
  log.subscribing = [];
  log.unsubscribed = [];
  log.publications = [];
  log.joins = [];
  log.leaves = [];
  log.errors = [];
  sub.on("subscribed", recorder(log.subscribed, subscribedOf));
  // Code 0 is the scenario's own subscribe().
  sub.on("subscribing", (ctx) => ctx.code !== 0 && recorder(log.subscribing, codeOf)(ctx));
  sub.on("unsubscribed", recorder(log.unsubscribed, codeOf));
  sub.on("publication", recorder(log.publications, publicationOf));
  sub.on("join", recorder(log.joins, (ctx) => ctx.info));
  sub.on("leave", recorder(log.leaves, (ctx) => ctx.info));
  sub.on("error", recorder(log.errors, errorOf));
  return sub;
}

function codeOf(ctx) {
  return { code: ctx.code, reason: ctx.reason };
}

function errorOf(ctx) {
  return { type: ctx.type, error: ctx.error ? { ...ctx.error } : null };
}

function subscribedOf(ctx) {
  return {
    channel: ctx.channel, recoverable: ctx.recoverable, positioned: ctx.positioned,
    wasRecovering: ctx.wasRecovering, recovered: ctx.recovered,
    hasRecoveredPublications: ctx.hasRecoveredPublications,
    streamPosition: ctx.streamPosition || null, data: ctx.data === undefined ? null : ctx.data,
  };
}

function publicationOf(ctx) {
  return {
    channel: ctx.channel, data: ctx.data, offset: ctx.offset === undefined ? null : ctx.offset,
    info: ctx.info || null, tags: ctx.tags || null,
  };
}

// The rejection of a call: {code, message, temporary}, or null if it resolved.
async function refusal(promise) {
  try {
    await promise;
    return null;
  } catch (err) {
    return { code: err.code, message: err.message, temporary: err.temporary };
  }
}

function run(ms, scenario) {
  bound(ms);
  scenario().then(() => finish(0), fail);
}

module.exports = {
  params, report, run, quiet, recorder, step, post, until, sleep, newClient, newSubscription, newWire, commands, refusal,
  publicationOf, subscribedOf,
};
