"use strict";
// A WebSocket handshake with credentials, on Node's `ws`, run by tests/test_auth_live.py:
//
//   node auth_client.js URL PROTOCOLS_JSON HEADERS_JSON
//
// PROTOCOLS_JSON is a JSON list of subprotocols to offer (e.g. ["wsgate.auth",
// "wsgate.bearer.<token>"]), HEADERS_JSON a JSON object of extra request headers.
// Refused ('unexpected-response'): prints the status, WWW-Authenticate and body.
// Accepted: sends one text message, waits for its echo, closes, and prints the
// selected subprotocol and the echo. Always one JSON line on stdout.

const WebSocket = require("ws");

const [url, protocolsJson, headersJson] = process.argv.slice(2);
if (!url) throw new Error("usage: node auth_client.js URL PROTOCOLS_JSON HEADERS_JSON");
const protocols = JSON.parse(protocolsJson || "[]");
const headers = JSON.parse(headersJson || "{}");
const MESSAGE = "ping from node";
const report = {
  status: null,
  wwwAuthenticate: null,
  body: null,
  opened: false,
  protocol: null,
  echo: null,
  closeCode: null,
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

const ws = new WebSocket(url, protocols, { headers });

ws.on("unexpected-response", (req, res) => {
  report.status = res.statusCode;
  report.wwwAuthenticate = res.headers["www-authenticate"] || null;
  let body = "";
  res.setEncoding("utf8");
  res.on("data", (chunk) => { body += chunk; });
  res.on("end", () => {
    report.body = body;
    finish(0);
  });
});

ws.on("upgrade", (res) => {
  report.status = res.statusCode;
});

ws.on("open", () => {
  report.opened = true;
  report.protocol = ws.protocol || null;
  ws.send(MESSAGE);
});

ws.on("message", (data, isBinary) => {
  report.echo = isBinary ? null : data.toString("utf8");
  ws.close(1000, "bye");
});

ws.on("close", (code) => {
  report.closeCode = code;
  finish(0);
});

ws.on("error", (err) => {
  report.error = String(err && err.message ? err.message : err);
});
