// Comparison: Node's `ws` package, echo (/ws) and a naive broadcast loop (/chat).
//
// The same endpoints and behaviour as aiohttp_bare.py: /ws sends each text or binary
// message back as it came; /chat sends each text message to every /chat connection,
// the sender included (binary messages are ignored); any other path gets a 404. No
// permessage-deflate, no heartbeat (aiohttp_bare.py does not ping either), messages up
// to 1 MiB (wsgate-bench.yaml's max_message_size), a listen backlog of 128 (aiohttp's).
//
// `ws` is the version pinned in tests/node/package.json, loaded from tests/node/node_modules
// (scripts/test installs it). Run by the bench as:
//   node bench/servers/node_ws.js --host 127.0.0.1 --port P
// `--check` loads `ws`, prints {"node": ..., "ws": ...} and exits.
'use strict';

const http = require('http');
const path = require('path');
const { createRequire } = require('module');

const NODE_DIR = path.resolve(__dirname, '..', '..', 'tests', 'node');
const MAX_PAYLOAD = 1024 * 1024;
const BACKLOG = 128;

function fail(text) {
  process.stderr.write(`node_ws.js: ${text}\n`);
  process.exit(2);
}

function loadWs() {
  const fromTests = createRequire(path.join(NODE_DIR, 'package.json'));
  const pinned = fromTests('./package.json').dependencies.ws;
  let ws;
  let version;
  try {
    ws = fromTests('ws');
    version = fromTests('ws/package.json').version;
  } catch (err) {
    fail(`cannot load ws from ${NODE_DIR}/node_modules (${err.code || err.message}): ` +
      'run `npm install --prefix tests/node --no-save --no-package-lock` (scripts/test does it)');
  }
  if (version !== pinned) {
    fail(`tests/node/node_modules has ws ${version}, tests/node/package.json pins ${pinned}: ` +
      'run `rm -rf tests/node/node_modules && npm install --prefix tests/node --no-save --no-package-lock`');
  }
  return { ws, version };
}

function parseArgs(argv) {
  const args = { host: '127.0.0.1', port: 8080, check: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--check') args.check = true;
    else if (arg === '--host' && i + 1 < argv.length) args.host = argv[++i];
    else if (arg === '--port' && i + 1 < argv.length) args.port = Number(argv[++i]);
    else fail(`unknown argument ${JSON.stringify(arg)}; usage: node_ws.js [--host H] [--port P] [--check]`);
  }
  if (!Number.isInteger(args.port) || args.port < 0 || args.port > 65535) fail('--port needs a port number');
  return args;
}

function serve(WebSocketServer, host, port) {
  // One upgrade router in front of two servers, as aiohttp's routes: the echo connections
  // are not tracked (aiohttp keeps no set of them), the chat ones are in CHAT.
  const options = { noServer: true, perMessageDeflate: false, maxPayload: MAX_PAYLOAD };
  const echo = new WebSocketServer({ ...options, clientTracking: false });
  const chat = new WebSocketServer({ ...options, clientTracking: false });
  const CHAT = new Set();

  echo.on('connection', (socket) => {
    socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }));
  });
  chat.on('connection', (socket) => {
    CHAT.add(socket);
    socket.on('close', () => CHAT.delete(socket));
    socket.on('message', (data, isBinary) => {
      if (isBinary) return;
      for (const peer of CHAT) {
        // a peer that is closing is skipped, as aiohttp_bare.py suppresses ConnectionError
        if (peer.readyState === peer.OPEN) peer.send(data, { binary: false });
      }
    });
  });
  // A connection's errors (a protocol violation, a reset) close it; they must not end the process.
  for (const wss of [echo, chat]) {
    wss.on('connection', (socket) => socket.on('error', () => {}));
  }

  const server = http.createServer((req, res) => {
    res.writeHead(404, { 'Content-Type': 'text/plain' });
    res.end('404: Not Found');
  });
  server.on('upgrade', (req, socket, head) => {
    socket.on('error', () => {});
    const route = (req.url || '/').split('?', 1)[0];
    const wss = route === '/ws' ? echo : route === '/chat' ? chat : null;
    if (wss === null) {
      socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
  });
  server.on('error', (err) => fail(`cannot listen on ${host}:${port}: ${err.message}`));
  server.listen({ host, port, backlog: BACKLOG });
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const { ws, version } = loadWs();
  if (args.check) {
    process.stdout.write(JSON.stringify({ node: process.versions.node, ws: version }) + '\n');
    return;
  }
  // The bench stops a server with SIGINT (then SIGKILL): exit at once, as the Python ones do.
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
  serve(ws.WebSocketServer, args.host, args.port);
}

main();
