"use strict";
// centrifuge-js calls rpc; the channels handler asks the test's rpc proxy, which answers
// with data for one method and an application error for another.
//
// PARAMS: {"token": JWT}

const kit = require("./centrifuge_kit");

const client = { wire: kit.newWire() };
Object.assign(kit.report, { client });

kit.run(8000, async () => {
  const centrifuge = kit.newClient({ token: kit.params.token }, client);
  centrifuge.connect();
  await centrifuge.ready(5000);
  client.echo = await centrifuge.rpc("echo", { q: "ping", n: 1 });
  client.refusal = await kit.refusal(centrifuge.rpc("refuse", { q: "no" }));
  client.afterRefusal = await centrifuge.rpc("echo", { q: "again" });
  client.state = centrifuge.state;
  kit.quiet();
  centrifuge.disconnect();
});
