"use strict";
// A channel whose namespace needs a subscription token: centrifuge-js asks getToken for it
// (with the channel), subscribes and receives. Without a token the subscribe is refused (103).
//
// PARAMS: {"token": JWT, "user": U, "channel": CH, "other": CH_OF_THE_SAME_NAMESPACE}

const kit = require("./centrifuge_kit");

const { user, channel, other } = kit.params;
const client = { wire: kit.newWire(), asked: [], sub: {}, other: {} };
Object.assign(kit.report, { client });

kit.run(10000, async () => {
  const centrifuge = kit.newClient({ token: kit.params.token }, client);
  const sub = kit.newSubscription(centrifuge, channel, {
    getToken: async (ctx) => {
      client.asked.push(ctx.channel);
      return (await kit.post("/subtoken", { user, channel: ctx.channel })).token;
    },
  }, client.sub);
  const bare = kit.newSubscription(centrifuge, other, {}, client.other);
  sub.subscribe();
  bare.subscribe();
  centrifuge.connect();
  await kit.until("subscribed with a token", () => client.sub.subscribed.length === 1);
  await kit.until("refused without one", () => client.other.unsubscribed.length === 1);
  await kit.step("publish", { channels: [channel], count: 2 });
  await kit.until("publications", () => client.sub.publications.length >= 2);
  client.subscribes = kit.commands(client.wire, "subscribe");
  client.otherState = bare.state;
  client.state = centrifuge.state;
  kit.quiet();
  centrifuge.disconnect();
});
