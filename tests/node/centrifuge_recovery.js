"use strict";
// centrifuge-js (connecting with getToken) loses its connection: the test has the server
// API disconnect it with 3011 (force reconnect) and publishes while it is away. On its own
// reconnect the client asks to recover and must get exactly the missed publications.
//
// PARAMS: {"user": U, "channel": CH}

const kit = require("./centrifuge_kit");

const { user, channel } = kit.params;
const client = { wire: kit.newWire(), tokens: 0, sub: {} };
Object.assign(kit.report, { client, steps: [] });

kit.run(12000, async () => {
  const centrifuge = kit.newClient({
    getToken: async () => {
      client.tokens += 1;
      return (await kit.post("/token", { user })).token;
    },
    minReconnectDelay: 1000, // the test publishes in this gap
    maxReconnectDelay: 1500,
  }, client);
  const sub = kit.newSubscription(centrifuge, channel, { recoverable: true }, client.sub);
  sub.subscribe();
  centrifuge.connect();
  await kit.until("subscribed", () => client.sub.subscribed.length === 1);
  kit.report.steps.push(await kit.step("publish", { channels: [channel], from: 1, to: 2 }));
  await kit.until("two live publications", () => client.sub.publications.length === 2);

  kit.report.steps.push(await kit.step("cut", { user }));
  await kit.until("the connection cut", () => client.connecting.some((c) => c.code === 3011));
  kit.report.steps.push(await kit.step("publish", { channels: [channel], from: 3, to: 5 }));
  await kit.until("subscribed again", () => client.sub.subscribed.length === 2, 6000);
  await kit.until("the missed publications", () => client.sub.publications.length >= 5);
  kit.report.steps.push(await kit.step("publish", { channels: [channel], from: 6, to: 6 }));
  await kit.until("a live publication after recovery", () => client.sub.publications.length >= 6);
  await kit.sleep(200); // nothing more arrives: no duplicates
  client.subscribes = kit.commands(client.wire, "subscribe");
  client.state = centrifuge.state;
  kit.quiet();
  centrifuge.disconnect();
});
