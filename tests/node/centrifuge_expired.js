"use strict";
// getToken first hands centrifuge-js an already expired connection token: the server
// answers connect with error 109, and the client asks getToken again and connects.
//
// PARAMS: {"user": U}

const kit = require("./centrifuge_kit");

const { user } = kit.params;
const client = { wire: kit.newWire(), tokens: [] };
Object.assign(kit.report, { client });

kit.run(10000, async () => {
  const centrifuge = kit.newClient({
    getToken: async () => {
      const { token } = await kit.post("/token", { user, ttl: client.tokens.length === 0 ? -30 : 60 });
      client.tokens.push(token);
      return token;
    },
    minReconnectDelay: 100,
    maxReconnectDelay: 300,
  }, client);
  centrifuge.connect();
  await kit.until("connected", () => client.connected.length === 1);
  client.connects = kit.commands(client.wire, "connect");
  client.state = centrifuge.state;
  kit.quiet();
  centrifuge.disconnect();
});
