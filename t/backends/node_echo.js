// A real WebSocket echo backend: the Node.js "ws" library (Debian's node-ws;
// run with NODE_PATH=/usr/share/nodejs), as its own process.
//
//   node node_echo.js [HOST [PORT]]        defaults 127.0.0.1, 0
//
// Prints the port it listens on as the first line of stdout, then echoes
// every message (text as text, binary as binary). It never pings by itself
// and ws answers every Ping with a Pong on its own. One extra: the text
// message "__stats__" is answered with a JSON line {"pings": N,
// "wshb_pings": M} counting the Pings this connection received (M: those
// whose payload starts with "wshb", the module's).
'use strict';

const WebSocket = require('ws');

const host = process.argv[2] || '127.0.0.1';
const port = Number(process.argv[3] || 0);

const wss = new WebSocket.Server({ host, port });

wss.on('listening', () => {
  process.stdout.write(wss.address().port + '\n');
});

wss.on('connection', (ws) => {
  let pings = 0;
  let wshbPings = 0;
  ws.on('ping', (data) => {
    pings++;
    if (data.length >= 4 && data.subarray(0, 4).toString('latin1') === 'wshb') {
      wshbPings++;
    }
  });
  ws.on('message', (data, isBinary) => {
    if (!isBinary && data.toString() === '__stats__') {
      ws.send(JSON.stringify({ pings, wshb_pings: wshbPings }));
      return;
    }
    ws.send(data, { binary: isBinary });
  });
  ws.on('error', () => {});
});

wss.on('error', (err) => {
  process.stderr.write(String(err) + '\n');
  process.exit(1);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}
