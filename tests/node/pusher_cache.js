"use strict";
// Cache channels with pusher-js, run by tests/test_pusher_cache.py: alice subscribes to
// cache-price before anything was triggered (pusher:cache_miss on the channel), the SDK
// triggers `price` twice, and bob, subscribing then, gets the last one first thing.
const { report, finish, fail, until, step, client, has } = require("./pusher_kit");

(async () => {
  const alice = client("alice");
  alice.sub("cache-price");
  await until("alice misses", () => has(alice.record, { channel: "cache-price", event: "pusher:cache_miss" }));
  await step("trigger");
  await until("alice gets both", () => alice.record.events.filter((e) => e.event === "price").length === 2);
  const bob = client("bob");
  bob.sub("cache-price");
  await until("bob gets the last", () => has(bob.record, { event: "price" }));
  alice.pusher.disconnect();
  bob.pusher.disconnect();
  report.stage = "done";
  finish(0);
})().catch(fail);
