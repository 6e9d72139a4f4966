"use strict";
// The server API disconnects a user: centrifuge-js gets 3503 "force disconnect", ends in
// the disconnected state and does not reconnect.
//
// PARAMS: {"token": JWT, "user": U, "channel": CH, "hold_ms": MS}

const kit = require("./centrifuge_kit");

const client = { wire: kit.newWire(), sub: {} };
Object.assign(kit.report, { client });

kit.run(10000, async () => {
  const centrifuge = kit.newClient({ token: kit.params.token, minReconnectDelay: 100, maxReconnectDelay: 200 }, client);
  const sub = kit.newSubscription(centrifuge, kit.params.channel, {}, client.sub);
  sub.subscribe();
  centrifuge.connect();
  await kit.until("subscribed", () => client.sub.subscribed.length === 1);
  await kit.step("kick", { user: kit.params.user });
  await kit.until("disconnected", () => client.disconnected.length >= 1);
  await kit.sleep(kit.params.hold_ms); // a reconnect would happen within this
  client.state = centrifuge.state;
  client.subState = sub.state;
});
