"use strict";
// A Node `ws` client that floods the server, run by tests/test_close_delivery.py:
//
//   node flood.js URL [--count N]
//
// As soon as the connection opens it sends N (default 1000) small text messages in one
// loop, without waiting for anything, then reads until the connection closes. It
// prints one JSON object: the close code and reason it saw (1006 when no close frame
// arrived), how many messages it received, and the last socket error, if any.

const WebSocket = require("ws");

function parseArgs(argv) {
  const args = { url: null, count: 1000 };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--count") args.count = Number(argv[++i]);
    else if (args.url === null) args.url = arg;
    else throw new Error(`unexpected argument ${arg}`);
  }
  if (!args.url) throw new Error("usage: node flood.js URL [--count N]");
  return args;
}

const args = parseArgs(process.argv.slice(2));
const report = { opened: false, sent: 0, received: 0, closeCode: null, closeReason: null, error: null };

function finish(exitCode) {
  clearTimeout(timer);
  process.stdout.write(JSON.stringify(report) + "\n");
  process.exit(exitCode);
}

const timer = setTimeout(() => {
  report.error = "timed out";
  finish(1);
}, 10000);

const ws = new WebSocket(args.url);

ws.on("open", () => {
  report.opened = true;
  for (let i = 0; i < args.count && ws.readyState === WebSocket.OPEN; i++) {
    ws.send(`flood ${i}`);
    report.sent++;
  }
});

ws.on("message", () => {
  report.received++;
});

ws.on("close", (code, reason) => {
  report.closeCode = code;
  report.closeReason = reason.toString("utf8");
  finish(0);
});

ws.on("error", (err) => {
  report.error = String(err && err.message ? err.message : err);
});
