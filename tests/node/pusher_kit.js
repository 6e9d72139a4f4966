"use strict";
// Shared by the pusher_*.js scenarios: pusher-js (npm pusher-js 8.6.0, its Node build)
// clients of a wsgate `pusher` endpoint, a bound, and one JSON report printed as the last
// line. A scenario is run as `node SCRIPT WS_HOST WS_PORT BACKEND_URL KEY`, where
// BACKEND_URL is the test's aiohttp app: POST /pusher/auth signs subscriptions, POST
// /pusher/user-auth signs sign-ins (both with the `pusher` Python SDK), and POST
// /step/NAME has the test do something (trigger with the SDK, read the API) and answer JSON.

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
setTimeout(() => fail(new Error(`bound reached at stage ${report.stage}`)), 20000).unref();

async function until(stage, check) {
  report.stage = stage;
  while (!check()) await new Promise((r) => setTimeout(r, 10));
}

async function step(name, body) {
  const r = await fetch(`${backend}/step/${name}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}),
  });
  if (!r.ok) throw new Error(`step ${name}: ${r.status} ${await r.text()}`);
  return r.json();
}

// A pusher-js client named `name` (its user, for the auth endpoints): report[name] records
// its connection states, errors and every event of the channels it subscribes to.
function client(name, options) {
  const pusher = new Pusher(key, Object.assign({
    wsHost: host, wsPort: Number(port), forceTLS: false, enabledTransports: ["ws"], disableStats: true,
    cluster: "wsgate",
    channelAuthorization: { endpoint: `${backend}/pusher/auth`, transport: "ajax", params: { user: name } },
    userAuthentication: { endpoint: `${backend}/pusher/user-auth`, transport: "ajax", params: { user: name } },
  }, options || {}));
  const record = report[name] = { events: [], states: [], errors: [] };
  pusher.connection.bind("state_change", (s) => record.states.push(s.current));
  pusher.connection.bind("error", (e) => record.errors.push(e));
  const sub = (channelName) => {
    const channel = pusher.subscribe(channelName);
    channel.bind_global((event, data) => record.events.push({ channel: channel.name, event, data }));
    return channel;
  };
  return { pusher, record, sub };
}

function has(record, match) {
  return record.events.some((e) => Object.keys(match).every((k) => JSON.stringify(e[k]) === JSON.stringify(match[k])));
}

module.exports = { Pusher, report, finish, fail, until, step, client, has };
