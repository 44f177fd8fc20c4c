// A real, independent WebSocket client for the integration tests: the
// Node.js "ws" library (Debian's node-ws; run with NODE_PATH=/usr/share/nodejs).
//
//   node ws_client.js URL IDLE_MS MESSAGE
//
// Connects, stays idle for IDLE_MS (ws answers every Ping with a Pong by
// itself and emits 'ping'), then sends MESSAGE as a text frame and waits for
// its echo. If the server closes the connection first, it stops there.
// Prints one JSON line and exits 0 whatever happened (exit 2 on bad usage);
// the test judges the result:
//   {opened, pings, ping_payload_lengths, ping_payload_prefixes, echo,
//    closed_early, close_code, close_after_ms, error, ready_state}
'use strict';

const WebSocket = require('ws');

const [url, idleArg, message] = process.argv.slice(2);
const idleMs = Number(idleArg);
if (!url || !Number.isFinite(idleMs) || message === undefined) {
  console.error('usage: node ws_client.js URL IDLE_MS MESSAGE');
  process.exit(2);
}

const result = {
  opened: false,
  pings: 0,
  ping_payload_lengths: [],
  ping_payload_prefixes: [],
  echo: null,
  closed_early: false,
  close_code: null,
  close_after_ms: null,
  error: null,
  ready_state: null,
};

let openedAt = null;
let sent = false;
let done = false;

function finish() {
  if (done) return;
  done = true;
  result.ready_state = ws.readyState;
  process.stdout.write(JSON.stringify(result) + '\n', () => {
    // terminate() drops the socket without a closing handshake when the
    // connection is still open; exit right after either way.
    try { ws.terminate(); } catch (e) { /* already closed */ }
    process.exit(0);
  });
}

const ws = new WebSocket(url);

ws.on('open', () => {
  result.opened = true;
  openedAt = Date.now();
  setTimeout(() => {
    if (done || result.closed_early) return;
    sent = true;
    ws.send(message);
  }, idleMs);
});

ws.on('ping', (data) => {
  result.pings += 1;
  result.ping_payload_lengths.push(data.length);
  result.ping_payload_prefixes.push(data.subarray(0, 4).toString('latin1'));
});

ws.on('message', (data, isBinary) => {
  if (!sent) return;              // only the echo of our message counts
  result.echo = isBinary ? null : data.toString();
  finish();
});

ws.on('error', (err) => {
  result.error = String(err && err.message || err);
});

ws.on('close', (code) => {
  result.close_code = code;
  if (openedAt !== null) result.close_after_ms = Date.now() - openedAt;
  if (!sent || result.echo === null) result.closed_early = true;
  finish();
});

// never hang the test: give up well after idle + echo
setTimeout(() => {
  if (result.error === null) result.error = 'client deadline';
  finish();
}, idleMs + 10000).unref();
