// Opens N socket.io-client@4.8 connections to the bridge (websocket transport) at once, waits
// until all are connected, has each emit `counter:hello {i}` and waits for each one's ack of
// `counter:ping`, then holds them until stdin closes. Prints JSON lines: {"ev":"connected","n":N},
// {"ev":"acked","n":N}, or {"ev":"failed","message":M}.
//   node sio_many.js --url http://127.0.0.1:PORT --n 1000 --prefix many
'use strict';
const { io } = require('socket.io-client');
const arg = (k, d) => { const i = process.argv.indexOf('--' + k); return i > 0 ? process.argv[i + 1] : d; };
const url = arg('url');
const n = Number(arg('n', 1000));
const prefix = arg('prefix', 'many');
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const socks = [];
let connected = 0;
let acked = 0;
for (let i = 0; i < n; i++) {
  const s = io(url, { transports: ['websocket'], forceNew: true, reconnection: false, auth: { name: `${prefix}-${i}` }, timeout: 60000 });
  socks.push(s);
  s.on('connect_error', (e) => out({ ev: 'failed', message: `${prefix}-${i}: ${e.message}` }));
  s.on('connect', () => {
    connected += 1;
    if (connected === n) {
      out({ ev: 'connected', n });
      socks.forEach((t, j) => {
        t.emit('counter:hello', { i: j });
        t.timeout(60000).emit('counter:ping', { i: j }, (err, v) => {
          if (err || !v || v.i !== j) { out({ ev: 'failed', message: `ack ${j}: ${err || JSON.stringify(v)}` }); return; }
          acked += 1;
          if (acked === n) out({ ev: 'acked', n });
        });
      });
    }
  });
}
process.stdin.resume();
process.stdin.on('end', () => { socks.forEach((s) => s.disconnect()); process.exit(0); });
