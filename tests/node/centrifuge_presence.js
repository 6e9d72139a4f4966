"use strict";
// Two centrifuge-js clients on one channel: join and leave, presence and its stats,
// publishing from a client (allowed in the channel's namespace, refused with 103 in
// another one), and history.
//
// PARAMS: {"alice": JWT, "bob": JWT, "channel": CH, "refused": CH_IN_A_NAMESPACE_WITHOUT_CLIENT_PUBLISH}

const kit = require("./centrifuge_kit");

const { channel, refused } = kit.params;
const alice = { wire: kit.newWire(), sub: {} };
const bob = { wire: kit.newWire(), sub: {} };
Object.assign(kit.report, { alice, bob });

kit.run(10000, async () => {
  const a = kit.newClient({ token: kit.params.alice }, alice);
  const subA = kit.newSubscription(a, channel, { joinLeave: true, positioned: true }, alice.sub);
  subA.subscribe();
  a.connect();
  await kit.until("alice subscribed", () => alice.sub.subscribed.length === 1);

  const b = kit.newClient({ token: kit.params.bob }, bob);
  const subB = kit.newSubscription(b, channel, { joinLeave: true }, bob.sub);
  subB.subscribe();
  b.connect();
  await kit.until("bob subscribed", () => bob.sub.subscribed.length === 1);
  await kit.until("alice sees bob join", () => alice.sub.joins.some((j) => j.user === "bob"));

  alice.presence = (await subA.presence()).clients;
  alice.presenceStats = await subA.presenceStats();
  alice.clientId = alice.connected[0].client;
  bob.clientId = bob.connected[0].client;

  alice.publishRefusal = await kit.refusal(subA.publish({ text: "hi from alice" }));
  await kit.until("bob gets alice's publication", () => bob.sub.publications.length >= 1);
  await kit.until("alice gets her own publication", () => alice.sub.publications.length >= 1);
  alice.refusedPublish = await kit.refusal(a.publish(refused, { text: "not here" }));

  kit.report.published = await kit.step("publish", { channels: [channel], count: 2 });
  await kit.until("both API publications", () => alice.sub.publications.length >= 3);
  alice.history = await subA.history({ limit: 10 });
  alice.historySince = await subA.history({ limit: 10, since: { offset: 1, epoch: alice.history.epoch } });
  alice.historyReverse = await subA.history({ limit: 2, reverse: true });
  alice.historyPosition = await subA.history({});

  subB.unsubscribe();
  await kit.until("alice sees bob leave", () => alice.sub.leaves.length >= 1);
  alice.presenceAfter = (await subA.presence()).clients;
  alice.presenceStatsAfter = await subA.presenceStats();
  kit.quiet();
  a.disconnect();
  b.disconnect();
});
