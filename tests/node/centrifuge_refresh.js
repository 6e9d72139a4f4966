"use strict";
// A connection token and a subscription token that expire in a few seconds: centrifuge-js
// calls getToken for new ones and sends refresh and sub_refresh; the connection and the
// subscription stay up past the old tokens' expiry and the server's close delay.
//
// PARAMS: {"user": U, "channel": CH, "private": CH_NEEDING_A_TOKEN, "first_ttl": S, "hold_ms": MS}

const kit = require("./centrifuge_kit");

const { user, channel } = kit.params;
const client = { wire: kit.newWire(), tokens: [], subTokens: [], sub: {}, privateSub: {} };
Object.assign(kit.report, { client });

function ttlOf(tokens) {
  return tokens.length === 0 ? kit.params.first_ttl : 60;
}

kit.run(15000, async () => {
  const centrifuge = kit.newClient({
    getToken: async () => {
      const { token } = await kit.post("/token", { user, ttl: ttlOf(client.tokens) });
      client.tokens.push(token);
      return token;
    },
  }, client);
  const sub = kit.newSubscription(centrifuge, channel, {}, client.sub);
  const privateSub = kit.newSubscription(centrifuge, kit.params.private, {
    getToken: async (ctx) => {
      const { token } = await kit.post("/subtoken", { user, channel: ctx.channel, ttl: ttlOf(client.subTokens) });
      client.subTokens.push(token);
      return token;
    },
  }, client.privateSub);
  sub.subscribe();
  privateSub.subscribe();
  centrifuge.connect();
  await kit.until("subscribed", () => client.sub.subscribed.length === 1 && client.privateSub.subscribed.length === 1);
  const late = kit.params.first_ttl * 1000 + 3000;
  await kit.until("a second connection token", () => client.tokens.length >= 2, late);
  await kit.until("a second subscription token", () => client.subTokens.length >= 2, late);
  await kit.sleep(kit.params.hold_ms); // past the first tokens' expiry and the close delay
  await kit.step("publish", { channels: [channel, kit.params.private], count: 1 });
  await kit.until("publications on the same connection",
    () => client.sub.publications.length >= 1 && client.privateSub.publications.length >= 1);
  client.refreshes = kit.commands(client.wire, "refresh");
  client.subRefreshes = kit.commands(client.wire, "sub_refresh");
  client.subscribes = kit.commands(client.wire, "subscribe");
  client.state = centrifuge.state;
  client.privateState = privateSub.state;
  kit.quiet();
  centrifuge.disconnect();
});
