"use strict";
// centrifuge-js connects with a token, subscribes to several channels in one go, and gets
// each channel's publications (sent by the test through the server API) in order.
//
// PARAMS: {"token": JWT, "channels": [..], "count": N}

const kit = require("./centrifuge_kit");

const { token, channels, count } = kit.params;
const wire = kit.newWire();
const client = { wire };
const subs = {};
Object.assign(kit.report, { client, subs, published: null, state: null });

kit.run(10000, async () => {
  const centrifuge = kit.newClient({ token }, client);
  const subscriptions = channels.map((channel) => {
    subs[channel] = {};
    return kit.newSubscription(centrifuge, channel, {}, subs[channel]);
  });
  subscriptions.forEach((sub) => sub.subscribe());
  centrifuge.connect();
  await kit.until("subscribed to every channel", () => channels.every((ch) => subs[ch].subscribed.length === 1));
  kit.report.published = await kit.step("publish", { channels, count });
  await kit.until("every publication", () => channels.every((ch) => subs[ch].publications.length >= count));
  await kit.sleep(200); // nothing more arrives: no duplicates
  kit.report.state = centrifuge.state;
  client.connects = kit.commands(wire, "connect");
  client.subscribes = kit.commands(wire, "subscribe");
  kit.quiet();
  centrifuge.disconnect();
});
