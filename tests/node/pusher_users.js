"use strict";
// User authentication with pusher-js, run by tests/test_pusher_users.py: alice calls
// pusher.signin() (the backend's /pusher/user-auth signs with the SDK's
// authenticate_user), binds `note` on pusher.user, the SDK's send_to_user reaches her,
// and terminate_user_connections closes her connection (4009: pusher-js does not
// reconnect). bob, never signed in, is left alone.
const { report, finish, fail, until, step, client } = require("./pusher_kit");

(async () => {
  const alice = client("alice");
  const notes = [];
  alice.pusher.user.bind("note", (data) => notes.push(data));
  alice.pusher.signin();
  await alice.pusher.user.signinDonePromise;
  await until("alice signed in", () => alice.pusher.user.user_data !== null
    && alice.pusher.user.serverToUserChannel && alice.pusher.user.serverToUserChannel.subscribed);
  report.userData = alice.pusher.user.user_data;
  const bob = client("bob");
  await until("bob connected", () => bob.pusher.connection.state === "connected");
  report.sent = await step("send");
  await until("alice gets the note", () => notes.length === 1);
  report.notes = notes;
  report.terminated = await step("terminate");
  await until("alice is closed", () => alice.record.states.includes("disconnected")
    || alice.record.states.includes("failed"));
  await new Promise((r) => setTimeout(r, 300)); // would pusher-js reconnect? (it must not after 4009)
  report.bobState = bob.pusher.connection.state;
  bob.pusher.disconnect();
  report.stage = "done";
  finish(0);
})().catch(fail);
