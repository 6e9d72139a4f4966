"use strict";
// Server-side subscriptions: those of the connection token's `channels` claim, then one
// the test adds through the server API. centrifuge-js reports them and their publications
// at the client level, each with ctx.channel. Then the test cuts the connection (3011) and
// publishes meanwhile: the token's channels come back recovered on the reconnect.
//
// PARAMS: {"token": JWT, "user": U, "channels": [..], "added": CH}

const kit = require("./centrifuge_kit");

const { channels, added, user } = kit.params;
const client = { wire: kit.newWire(), subscribed: [], publications: [], unsubscribed: [], before: null };
Object.assign(kit.report, { client });

kit.run(10000, async () => {
  const centrifuge = kit.newClient({
    token: kit.params.token,
    minReconnectDelay: 1000, // the test publishes in this gap
    maxReconnectDelay: 1500,
  }, client);
  centrifuge.on("subscribed", kit.recorder(client.subscribed, kit.subscribedOf));
  centrifuge.on("publication", kit.recorder(client.publications, kit.publicationOf));
  centrifuge.on("unsubscribed", kit.recorder(client.unsubscribed, (ctx) => ({ channel: ctx.channel })));
  centrifuge.connect();
  await kit.until("the token's channels", () => client.subscribed.length >= channels.length);
  await kit.step("publish", { channels, count: 2 });
  await kit.until("their publications", () => client.publications.length >= 2 * channels.length);
  await kit.step("subscribe", { user, channel: added });
  await kit.until("the channel the API added", () => client.subscribed.some((s) => s.channel === added));
  await kit.step("publish", { channels: [added], count: 1 });
  await kit.until("its publication", () => client.publications.some((p) => p.channel === added));
  client.before = { subscribed: client.subscribed.length, publications: client.publications.length };

  await kit.step("cut", { user });
  await kit.until("the connection cut", () => client.connecting.some((c) => c.code === 3011));
  await kit.step("publish", { channels: [channels[0]], from: 3, to: 4 });
  await kit.until("the token's channels again", () => client.subscribed.length >= client.before.subscribed + channels.length, 6000);
  await kit.until("the missed publications", () => client.publications.length >= client.before.publications + 2);
  await kit.sleep(200);
  client.connects = kit.commands(client.wire, "connect");
  client.state = centrifuge.state;
  kit.quiet();
  centrifuge.disconnect();
});
