// Socket.IO benchmark client (socket.io-client@4.8, websocket transport): N acked round trips
// `emitWithAck(EVENT, {i, pad})` with WINDOW in flight; prints one JSON line
// {n, secs, rps, p50_us, p99_us}.
//   node sio_bench.js --url http://127.0.0.1:PORT --n 20000 --window 16 [--token T] [--event rust:echo] [--bytes 64]
'use strict';
const { io } = require('socket.io-client');
const arg = (k, d) => { const i = process.argv.indexOf('--' + k); return i > 0 ? process.argv[i + 1] : d; };
const n = Number(arg('n', 20000));
const windowSize = Number(arg('window', 16));
const event = arg('event', 'rust:echo');
const pad = 'x'.repeat(Math.max(0, Number(arg('bytes', 64)) - 16));
const s = io(arg('url'), { transports: ['websocket'], reconnection: false, auth: { name: 'bench-client', token: arg('token', undefined) } });
const lat = new Float64Array(n);
let sent = 0;
let done = 0;
let t0 = 0;
function one() {
  const i = sent++;
  const start = process.hrtime.bigint();
  s.timeout(30000).emit(event, { i, pad }, (err, v) => {
    if (err || !v || v.i !== i) { console.error('bad answer', i, err, v); process.exit(1); }
    lat[i] = Number(process.hrtime.bigint() - start) / 1000;
    done++;
    if (done === n) finish();
    else if (sent < n) one();
  });
}
function finish() {
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const sorted = Array.from(lat).sort((a, b) => a - b);
  const q = (p) => Math.round(sorted[Math.min(n - 1, Math.floor(p * n))]);
  process.stdout.write(JSON.stringify({ n, secs: +secs.toFixed(3), rps: Math.round(n / secs), p50_us: q(0.5), p99_us: q(0.99) }) + '\n');
  s.disconnect();
  process.exit(0);
}
s.on('connect_error', (e) => { console.error('connect_error', e.message); process.exit(1); });
s.on('connect', () => {
  // Warm-up round trip, then the measured run.
  s.timeout(10000).emit(event, { i: -1, pad }, (err) => {
    if (err) { console.error('warm-up failed', err); process.exit(1); }
    t0 = process.hrtime.bigint();
    for (let k = 0; k < Math.min(windowSize, n); k++) one();
  });
});
