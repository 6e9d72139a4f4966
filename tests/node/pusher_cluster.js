"use strict";
// pusher-js (npm pusher-js 8.6.0, its Node build) on two wsgate instances that share a broker;
// run by tests/test_pusher_cluster.py as
//
//   node pusher_cluster.js WS_HOST PORT_A PORT_B BACKEND_URL KEY
//
// alice connects to instance A, bob to instance B; both subscribe to news, private-chat and
// presence-room. BACKEND_URL is the test's aiohttp app: POST /pusher/auth signs with the
// `pusher` Python SDK; POST /step/info reads each instance's view of the channels through
// its HTTP API; POST /step/trigger has the SDK trigger "from-a" through instance A and
// "from-b" through instance B. alice sends a client event to bob, then bob leaves, then alice.
// Prints one JSON report as its last line; exits 0, or 1 at a failure or at its bound.

const kit = require("./pusher_kit");
const { report, finish, fail, until, step, connect, listen } = kit;

const { portA, portB } = kit.scenario({
  argNames: ["host", "portA", "portB", "backend", "key"], boundMs: 25000,
  fields: { alice: { events: [] }, bob: { events: [] } },
});
const CHANNELS = ["news", "private-chat", "presence-room"];

// A presence channel's members when subscribed, a member by id, any other event's data.
function describe(channel, event, data) {
  const entry = { channel: channel.name, event };
  if (event === "pusher:subscription_succeeded" && channel.members) {
    entry.ids = Object.keys(channel.members.members).sort();
  } else if (event.startsWith("pusher:member")) {
    entry.member = data.id;
  } else {
    entry.data = data;
  }
  return entry;
}

function client(user, port) {
  const pusher = connect(user, {}, port);
  const channels = {};
  for (const name of CHANNELS) channels[name] = listen(pusher.subscribe(name), report[user].events, describe);
  return { pusher, channels };
}

const has = (user, match) => kit.has(report[user], match);
const subscribed = (user) => CHANNELS.every((c) => has(user, { channel: c, event: "pusher:subscription_succeeded" }));

(async () => {
  const alice = client("alice", portA);
  await until("alice subscribed on A", () => subscribed("alice"));
  const bob = client("bob", portB);
  await until("bob subscribed on B", () => subscribed("bob"));
  await until("alice sees bob join on B", () => has("alice", { event: "pusher:member_added", member: "bob" }));

  report.info = await step("info");
  report.triggered = await step("trigger");
  const four = (user) => report[user].events.filter((e) => e.event === "from-a" || e.event === "from-b").length >= 4;
  await until("the SDK's events through both instances", () => four("alice") && four("bob"));

  report.clientTriggered = alice.channels["private-chat"].trigger("client-hello", { from: "alice" });
  await until("bob gets alice's client event", () => has("bob", { event: "client-hello" }));

  bob.pusher.disconnect();
  await until("alice sees bob leave", () => has("alice", { event: "pusher:member_removed", member: "bob" }));
  report.after = await step("info");
  await new Promise((r) => setTimeout(r, 200)); // a duplicate event would come now
  alice.pusher.disconnect();
  report.stage = "done";
  finish(0);
})().catch(fail);
