// Round trips from a legacy node-ipc@9.2.1 client, one in flight: emits `rust:ping` and waits
// for `legacy:pong` (answered by a Rust client through the bridge and the hub, or by
// echo_server.js directly). Prints one JSON line with the round-trip percentiles.
//   node pingpong.js --path SOCKET [--n 20000] [--warmup 2000]
'use strict';
const ipc = require('node-ipc');
const args = process.argv.slice(2);
const opt = (k, d) => { const i = args.indexOf('--' + k); return i < 0 ? d : args[i + 1]; };
const N = Number(opt('n', 20000));
const WARM = Number(opt('warmup', 2000));
ipc.config.id = 'legacy';
ipc.config.silent = true;
ipc.connectTo('bus', opt('path'), () => {
  const s = ipc.of.bus;
  const lat = new Float64Array(N);
  let i = 0, t = 0n, started = false;
  const ping = () => { t = process.hrtime.bigint(); s.emit('rust:ping', { seq: i, text: 'ping' }); };
  s.on('legacy:pong', (d) => {
    if (d.seq !== i) { process.stderr.write('pong out of order\n'); process.exit(1); }
    const dt = Number(process.hrtime.bigint() - t) / 1000;
    if (i >= WARM) lat[i - WARM] = dt;
    i++;
    if (i === WARM + N) {
      lat.sort();
      const p = (q) => +lat[Math.min(N - 1, Math.floor(q * N))].toFixed(1);
      const mean = lat.reduce((a, b) => a + b, 0) / N;
      process.stdout.write(JSON.stringify({ round_trips: N, p50_us: p(0.5), p99_us: p(0.99), mean_us: +mean.toFixed(1) }) + '\n');
      process.exit(0);
    }
    ping();
  });
  s.on('connect', () => {
    s.emit('hello', { id: 'legacy' });
    if (!started) { started = true; setTimeout(ping, 300); }
  });
});
setTimeout(() => { process.stderr.write('pingpong: timed out\n'); process.exit(2); }, 120000);
