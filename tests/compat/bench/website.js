// A legacy website on node-ipc@9.2.1 doing fresh gets that the bot answers, with a window of
// gets in flight; prints one JSON line: throughput and latency percentiles (per get, from
// emit to its response).
//   node website.js --path SOCKET | --host H --port N  [--n 100000] [--window 64] [--warmup 5000]
'use strict';
const ipc = require('node-ipc');
const args = process.argv.slice(2);
const opt = (k, d) => { const i = args.indexOf('--' + k); return i < 0 ? d : args[i + 1]; };
const N = Number(opt('n', 100000));
const W = Number(opt('window', 64));
const WARM = Number(opt('warmup', 5000));
ipc.config.id = 'website';
ipc.config.silent = true;
ipc.config.retry = 100;

const go = () => {
  const s = ipc.of.bus;
  const sent = new Map();
  const lat = new Float64Array(N);
  let issued = 0, done = 0, errors = 0, t0 = 0n, started = false;
  const total = WARM + N;
  function issue() {
    while (issued < total && issued - done < W) {
      const r = ++issued;
      sent.set(r, process.hrtime.bigint());
      s.emit('get', { from: 'bot', type: 'stats', request: r, fresh: true });
    }
  }
  s.on('response', (d) => {
    const t = sent.get(d.request);
    if (t === undefined) return;
    sent.delete(d.request);
    if (d.error !== undefined || !d.data || typeof d.data.served !== 'number') errors++;
    const k = done - WARM;
    if (k >= 0) lat[k] = Number(process.hrtime.bigint() - t) / 1000;
    done++;
    if (done === WARM) t0 = process.hrtime.bigint();
    if (WARM === 0 && done === 1) t0 = t;
    if (done === total) {
      const secs = Number(process.hrtime.bigint() - t0) / 1e9;
      lat.sort();
      const p = (q) => lat[Math.min(N - 1, Math.floor(q * N))];
      process.stdout.write(JSON.stringify({
        gets: N, window: W, secs: +secs.toFixed(3), gets_per_s: Math.round(N / secs),
        p50_us: +p(0.5).toFixed(1), p99_us: +p(0.99).toFixed(1), p999_us: +p(0.999).toFixed(1), errors,
        // CPU this process used per get over the whole run (warm-up included).
        cpu_us_per_get: +((process.cpuUsage().user + process.cpuUsage().system) / total).toFixed(1),
        total_gets: total,
      }) + '\n');
      process.exit(errors ? 1 : 0);
    }
    issue();
  });
  s.on('connect', () => {
    s.emit('hello', { id: 'website' });
    if (started) return;
    started = true;
    // Give the hello a moment to register before the first get.
    setTimeout(issue, 300);
  });
};
if (opt('path')) ipc.connectTo('bus', opt('path'), go);
else ipc.connectToNet('bus', opt('host', '127.0.0.1'), Number(opt('port')), go);
setTimeout(() => { process.stderr.write('website: timed out\n'); process.exit(2); }, 300000);
