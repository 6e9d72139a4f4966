"use strict";
// subscription_count with pusher-js, run by tests/test_pusher_counts.py: alice and bob
// subscribe to `news`; each binds pusher:subscription_count, the event pusher-js makes of
// pusher_internal:subscription_count, and reads channel.subscriptionCount; bob leaves.
const { report, finish, fail, until, client, has } = require("./pusher_kit");

(async () => {
  const alice = client("alice");
  const news = alice.sub("news");
  await until("alice counted", () => has(alice.record, { event: "pusher:subscription_count",
                                                         data: { subscription_count: 1 } }));
  const bob = client("bob");
  bob.sub("news");
  await until("both counted", () => has(alice.record, { event: "pusher:subscription_count",
                                                        data: { subscription_count: 2 } })
    && has(bob.record, { event: "pusher:subscription_count", data: { subscription_count: 2 } }));
  report.aliceSeesTwo = news.subscriptionCount;
  bob.pusher.disconnect();
  await until("bob left", () => alice.record.events.filter((e) => e.event === "pusher:subscription_count").length === 3);
  report.aliceSeesOne = news.subscriptionCount;
  alice.pusher.disconnect();
  report.stage = "done";
  finish(0);
})().catch(fail);
