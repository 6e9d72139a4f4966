"use strict";
// Shared by the pusher_*.js scenarios: pusher-js (npm pusher-js 8.6.0, its Node build)
// clients of a wsgate `pusher` endpoint, a bound, and one JSON report printed as the last
// line (exit 0 after finish(0), or 1 at a failure or at the bound). A scenario is run as
// `node SCRIPT WS_HOST WS_PORT BACKEND_URL KEY`, where BACKEND_URL is the test's aiohttp
// app: POST /pusher/auth signs subscriptions, POST /pusher/user-auth signs sign-ins (both
// with the `pusher` Python SDK), and POST /step/NAME has the test do something (trigger
// with the SDK, read the API) and answer JSON. A scenario with another command line, bound
// or report calls scenario() first.

const Pusher = require("pusher-js");

const USUAL_ARGS = ["host", "port", "backend", "key"];
const args = {}; // the command line's arguments, by the names scenario() gave them
const report = { stage: "start", error: null };
const started = Date.now();
let finished = false;
let bound = null;

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

// Names the command line's arguments (WS_HOST is always `host`; the kit's clients read
// `port`, `backend` and `key` unless told otherwise), sets the bound in ms after which the
// scenario fails, and adds `fields` to the report after stage and error. Answers `args`.
function scenario({ argNames = USUAL_ARGS, boundMs = 20000, fields = {} } = {}) {
  const values = process.argv.slice(2);
  for (const name of Object.keys(args)) delete args[name];
  argNames.forEach((name, i) => (args[name] = values[i]));
  clearTimeout(bound);
  bound = setTimeout(() => fail(new Error(`bound reached at stage ${report.stage}`)), boundMs).unref();
  Object.assign(report, fields);
  return args;
}
scenario();

// Milliseconds since the scenario started, for reports that time what they saw.
const now = () => Date.now() - started;

async function until(stage, check) {
  report.stage = stage;
  while (!check()) await new Promise((r) => setTimeout(r, 10));
}

async function step(name, body) {
  const r = await fetch(`${args.backend}/step/${name}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}),
  });
  if (!r.ok) throw new Error(`step ${name}: ${r.status} ${await r.text()}`);
  return r.json();
}

// pusher-js's options for wsgate at ws://WS_HOST:PORT (the command line's port unless
// given): the plain WebSocket transport only, no stats sent to Pusher; `extra` adds to them.
function options(extra, port = args.port) {
  return Object.assign({
    wsHost: args.host, wsPort: Number(port), forceTLS: false, enabledTransports: ["ws"], disableStats: true,
    cluster: "wsgate",
  }, extra);
}

// The backend's auth endpoint PATH as pusher-js asks it: a form POST that carries
// user=USER, for whom the test's auth view signs.
function authEndpoint(path, user) {
  return { endpoint: `${args.backend}${path}`, transport: "ajax", params: { user } };
}

// A pusher-js client with the command line's key whose subscriptions and sign-in the
// backend signs for `user`; `extra` adds to or overrides the options.
function connect(user, extra, port) {
  return new Pusher(args.key, options(Object.assign({
    channelAuthorization: authEndpoint("/pusher/auth", user),
    userAuthentication: authEndpoint("/pusher/user-auth", user),
  }, extra), port));
}

// How a channel's event goes in a record, unless a scenario describes it otherwise.
const plain = (channel, event, data) => ({ channel: channel.name, event, data });

// Pushes every event of `channel` to `events`, as describe(channel, event, data) puts it.
function listen(channel, events, describe = plain) {
  channel.bind_global((event, data) => events.push(describe(channel, event, data)));
  return channel;
}

// A pusher-js client named `name` (its user, for the auth endpoints): report[name] records
// its connection states, errors and every event of the channels it subscribes to. `options`
// add to connect()'s; `describe` is listen()'s; `record` is where it starts (errors is made
// at the first error when the record starts without it).
function client(name, { options: extra, describe, record = { events: [], states: [], errors: [] } } = {}) {
  const pusher = connect(name, extra);
  report[name] = record;
  pusher.connection.bind("state_change", (s) => record.states.push(s.current));
  pusher.connection.bind("error", (e) => (record.errors = record.errors || []).push(e));
  const sub = (channelName) => listen(pusher.subscribe(channelName), record.events, describe);
  return { pusher, record, sub };
}

function has(record, match) {
  return record.events.some((e) => Object.keys(match).every((k) => JSON.stringify(e[k]) === JSON.stringify(match[k])));
}

module.exports = {
  Pusher, args, report, scenario, finish, fail, now, until, step, options, connect, listen, client, has,
};
