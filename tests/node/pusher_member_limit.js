"use strict";
// The presence member limit with pusher-js, run by tests/test_pusher_limits.py on an app
// whose presence channels take 2 members: alice and bob join presence-room; carol is
// refused, which pusher-js gives as pusher:subscription_error on the channel; bob leaves,
// and carol, subscribing again, joins.
const { report, finish, fail, until, client, has } = require("./pusher_kit");

const joined = (c) => has(c.record, { channel: "presence-room", event: "pusher:subscription_succeeded" });

(async () => {
  const alice = client("alice");
  alice.sub("presence-room");
  await until("alice joined", () => joined(alice));
  const bob = client("bob");
  bob.sub("presence-room");
  await until("bob joined", () => joined(bob));
  const carol = client("carol");
  carol.sub("presence-room");
  await until("carol refused", () => has(carol.record, { event: "pusher:subscription_error" }));
  report.carolState = carol.pusher.connection.state;
  bob.pusher.disconnect();
  await until("bob left", () => has(alice.record, { event: "pusher:member_removed" }));
  // pusher-js leaves a channel the server refused pending, and a pending channel is not
  // subscribed again: drop it before subscribing anew (docs/pusher.md says so).
  carol.pusher.channel("presence-room").subscriptionPending = false;
  carol.pusher.unsubscribe("presence-room");
  carol.sub("presence-room");
  await until("carol joined", () => joined(carol));
  report.members = Object.keys(carol.pusher.channel("presence-room").members.members).sort();
  alice.pusher.disconnect();
  carol.pusher.disconnect();
  report.stage = "done";
  finish(0);
})().catch(fail);
