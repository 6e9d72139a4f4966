"use strict";
// A WebSocket client on Node's `ws`, run by tests/test_other_clients.py:
//
//   node client.js URL [--protocol NAME]... [--close-code N] [--close-reason TEXT]
//
// It sends one text and one binary message, checks that each comes back unchanged and
// of the same kind, closes with the given code and reason (default 4002 "node bye"),
// and prints one JSON object describing everything it saw, including the close code
// and reason the server answered with.

const WebSocket = require("ws");

function parseArgs(argv) {
  const args = { url: null, protocols: [], closeCode: 4002, closeReason: "node bye" };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--protocol") args.protocols.push(argv[++i]);
    else if (arg === "--close-code") args.closeCode = Number(argv[++i]);
    else if (arg === "--close-reason") args.closeReason = argv[++i];
    else if (args.url === null) args.url = arg;
    else throw new Error(`unexpected argument ${arg}`);
  }
  if (!args.url) throw new Error("usage: node client.js URL [--protocol NAME]...");
  return args;
}

const args = parseArgs(process.argv.slice(2));
const TEXT = "hello from node \u2713";
const BINARY = Buffer.from([0, 1, 2, 0x7f, 0x80, 0xfe, 0xff]);
const report = {
  opened: false,
  protocol: null,
  extensions: null,
  received: [],
  textEcho: false,
  binaryEcho: false,
  closeCode: null,
  closeReason: null,
  error: null,
};

function finish(exitCode) {
  clearTimeout(timer);
  process.stdout.write(JSON.stringify(report) + "\n");
  process.exit(exitCode);
}

const timer = setTimeout(() => {
  report.error = "timed out";
  finish(1);
}, 8000);

const ws = new WebSocket(args.url, args.protocols);

ws.on("open", () => {
  report.opened = true;
  report.protocol = ws.protocol || null;
  report.extensions = ws.extensions;
  ws.send(TEXT);
  ws.send(BINARY);
});

ws.on("message", (data, isBinary) => {
  const buf = Buffer.isBuffer(data) ? data : Buffer.concat(data);
  report.received.push({ binary: isBinary, data: isBinary ? buf.toString("hex") : buf.toString("utf8") });
  if (report.received.length === 1) report.textEcho = !isBinary && buf.toString("utf8") === TEXT;
  if (report.received.length === 2) {
    report.binaryEcho = isBinary && buf.equals(BINARY);
    ws.close(args.closeCode, args.closeReason);
  }
});

ws.on("close", (code, reason) => {
  report.closeCode = code;
  report.closeReason = reason.toString("utf8");
  finish(0);
});

ws.on("error", (err) => {
  report.error = String(err && err.message ? err.message : err);
});
