"use strict";
// pusher-js's README examples against wsgate, run by tests/test_pusher_readme.py, which
// quotes them, changes their host and port, and writes them to SNIPPETS (a JSON object,
// name -> code). Run as `node pusher_readme.js BACKEND_URL SNIPPETS`.
//
// Each example runs as the body of a function whose parameters are the names it uses and
// the README leaves to the reader (APP_KEY, APP_CLUSTER, console, $, callback, handler,
// context, a channel or pusher from an earlier example); what it declares and a later
// example needs is handed back. Everything else here is the glue a page would have
// around the examples: waiting for events, the receivers of the SDK's README examples,
// and a second client to see client events.
const fs = require("fs");
const { report, scenario, finish, fail, until, step, listen } = require("./pusher_kit");

const args = scenario({
  argNames: ["backend", "snippets"], boundMs: 8000,
  fields: { logs: [], status: [], connected: 0, disconnected: 0 },
});
const { placeholders, snippets, glueOptions } = JSON.parse(fs.readFileSync(args.snippets, "utf8"));

// What the examples print and show: console.log and jQuery's $(selector).text(...).
const readmeConsole = {
  log: (...parts) => report.logs.push(parts.map((p) => (typeof p === "string" ? p : JSON.stringify(p))).join(" ")),
};
const $ = (selector) => ({ text: (text) => report.status.push([selector, text]) });

// Runs README example `name` with `scope` in view; answers the values of `exported`, the
// names it declares that later code uses.
let Pusher; // from the README's require example
function run(name, scope = {}, exported = []) {
  const env = { ...(Pusher ? { Pusher } : {}), ...placeholders, console: readmeConsole, $, ...scope };
  const handBack = exported.map((n) => `${n}: typeof ${n} === "undefined" ? undefined : ${n}`).join(", ");
  // eslint-disable-next-line no-new-func
  return new Function(...Object.keys(env), `${snippets[name]}\n;return { ${handBack} };`)(...Object.values(env));
}

const subscribed = (channel) => channel.subscribed;
const count = (events, match) => events.filter((e) => Object.keys(match).every(
  (k) => JSON.stringify(e[k]) === JSON.stringify(match[k]))).length;

(async () => {
  ({ Pusher } = run("require", { require }, ["Pusher"]));
  // The reader: the README's Configuration, Default events and Connection Events.
  const { pusher } = run("configuration", {}, ["pusher"]);
  run("state_change", { pusher });
  run("connected", { pusher, callback: () => report.connected++ });
  run("disconnected", { pusher, callback: () => report.disconnected++ });
  await until("connected", () => report.connected === 1);
  report.socketId = pusher.connection.socket_id;

  // Subscribing, accessing, binding.
  const { channel: myChannel } = run("subscribe_public", { pusher }, ["channel"]);
  run("bind_new_message", { channel: myChannel });
  run("bind_with_context", { channel: myChannel });
  run("bind_global", { channel: myChannel });
  const { channel: privateChannel } = run("subscribe_private", { pusher }, ["channel"]);
  report.accessed = run("access_channel", { pusher }, ["channel"]).channel === privateChannel;
  const { channel: encrypted } = run("subscribe_encrypted", { pusher }, ["channel"]);
  const received = (report.received = []);
  listen(encrypted, received);
  // Receivers of the SDK README's triggers, and the presence channel of its queries.
  const aChannel = listen(pusher.subscribe("a_channel"), received);
  const anotherChannel = listen(pusher.subscribe("another_channel"), received);
  const presenceChannel = pusher.subscribe("presence-chatroom");
  run("bind_presence_client_event", { presenceChannel });
  await until("reader subscribed", () => [myChannel, privateChannel, encrypted, aChannel, anotherChannel,
    presenceChannel].every(subscribed));
  const before = report.logs.length;
  run("all_channels", { pusher });
  report.allChannels = report.logs.slice(before);

  // A second page, configured the same way, to receive and send client events.
  const { pusher: peer } = run("configuration", {}, ["pusher"]);
  const peerEvents = (report.peerEvents = []);
  const peerPrivate = listen(peer.subscribe("private-my-channel"), peerEvents);
  const peerPresence = listen(peer.subscribe("presence-chatroom"), peerEvents);
  await until("peer subscribed", () => subscribed(peerPrivate) && subscribed(peerPresence));
  run("trigger_client_event", { channel: privateChannel });
  report.peerTriggered = peerPresence.trigger("client-message", { text: "hi from the peer" });

  // The app's events on my-channel, then the SDK README's examples.
  report.appEvents = await step("app_events");
  report.triggers = await step("sdk_triggers");
  await until("events received", () => report.logs.includes("hello from the app")
    && report.logs.includes("hi Pusher") && count(received, { event: "an_event" }) === 5
    && count(received, { event: "my-event" }) === 1 && count(peerEvents, { event: "client-my-event" }) === 1
    && report.logs.some((l) => l.startsWith("received data from")));
  report.queries = await step("sdk_queries");

  // send_to_user and terminate_user_connections need a signed-in user: pusher-js's README
  // documents the userAuthentication option but shows no code for it.
  const user = new Pusher(placeholders.APP_KEY, glueOptions);
  const userEvents = [];
  report.userStates = [];
  report.userErrors = [];
  user.connection.bind("state_change", (s) => report.userStates.push(s.current));
  user.connection.bind("error", (e) => report.userErrors.push(e));
  user.user.bind("some_event", (data) => userEvents.push(data));
  user.signin();
  await until("user signed in", () => user.user.serverToUserChannel && user.user.serverToUserChannel.subscribed);
  report.sentToUser = await step("send_to_user");
  await until("user's event", () => userEvents.length === 1);
  report.userEvents = userEvents;
  report.terminated = await step("terminate");
  await until("user terminated", () => report.userStates.includes("disconnected"));

  // Unbinding: after the README's unbind and unbind_global examples, my-channel's events
  // log nothing; the sentinel on a_channel, triggered after them, shows they came.
  run("unbind", { channel: myChannel, handler: () => {}, context: {} });
  run("unbind_global", { channel: myChannel, handler: () => {} });
  const logged = report.logs.length;
  await step("app_events");
  await step("sentinel");
  await until("sentinel", () => count(received, { event: "sentinel" }) === 1);
  report.loggedAfterUnbind = report.logs.slice(logged);

  // Unsubscribing and disconnecting.
  run("unsubscribe_public", { pusher });
  run("unsubscribe_private", { pusher });
  report.afterUnsubscribe = await step("after_unsubscribe");
  peer.disconnect();
  run("disconnect", { pusher });
  await until("disconnected", () => report.disconnected === 1);
  report.stage = "done";
  finish(0);
})().catch(fail);
