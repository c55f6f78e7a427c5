// A node-ipc@9.2.1 client for the chaos soak (tests/soak.rs): it runs its own workload and
// checks its own invariants, printing one JSON line per finding.
//
// argv[2]: {"id", "path", "targets": [rust client names], "periodMs", "callDeadlineMs"}
// Workload, every period while connected: an event `<target>:nseq` {conn, seq} to each
// target (seq counts per target), and every 5th period a fresh get of kind `t` from the next
// target (its answer must be the target's name); every 10th period a `data` of kind `d`
// keyed by our id, {conn, tick}, and 5 periods later a cached get of it (answered from the
// hub's cache; a miss comes to us and is answered with an error).
// Checks: every `seq` event from a bus client arrives in order, without gaps or duplicates,
// while both sides keep their link (the sender's `epoch` and our `conn` tell); every get is
// answered (data or error) within callDeadlineMs, unless our connection dropped (node-ipc's
// way of failing a call) or the driver says we were stopped ({"op":"resume"}); a data value
// read back is one we wrote, not from the future, never older than one read before.
// Prints {"ev":"violation","what":…}, {"ev":"stats",…} every 2 s and on {"op":"finish"}.
'use strict';
const ipc = require('node-ipc');
const readline = require('readline');

const cfg = JSON.parse(process.argv[2]);
ipc.config.silent = true;
ipc.config.id = cfg.id;
ipc.config.retry = 100;
ipc.config.maxRetries = false;

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const stats = { sent: 0, recv: 0, calls: 0, answered: 0, errors: 0, connects: 0, data_reads: 0 };
// The newest [conn, tick] of ours read back from the cache.
let dataSeen = [0, 0];
const newer = (a, b) => a[0] > b[0] || (a[0] === b[0] && a[1] >= b[1]);
// Connection epochs grow across restarts of an agent of the same id too.
let conn = Date.now() * 1000;
let connected = false;
let tick = 0;
let nextReq = 1;
const seqTo = {};
const lastFrom = {};
const pending = new Map();

function violation(what) {
  out({ ev: 'violation', who: cfg.id, what });
}

ipc.connectTo('bus', cfg.path, () => {
  const bus = ipc.of.bus;
  bus.on('connect', () => {
    conn += 1;
    stats.connects += 1;
    connected = true;
    for (const k of Object.keys(lastFrom)) delete lastFrom[k];
    pending.clear();
    bus.emit('hello', { id: cfg.id });
  });
  bus.on('disconnect', () => {
    connected = false;
    pending.clear();
  });
  bus.on('seq', (d) => {
    stats.recv += 1;
    const last = lastFrom[d.from];
    if (last && d.epoch === last.epoch && d.seq !== last.seq + 1) {
      violation(`from ${d.from} epoch ${d.epoch}: seq ${d.seq} after ${last.seq}`);
    } else if (last && d.epoch < last.epoch) {
      violation(`from ${d.from}: epoch ${d.epoch} after ${last.epoch}`);
    }
    lastFrom[d.from] = { epoch: d.epoch, seq: d.seq };
  });
  // A cache miss of our own data comes to us: no value, an error.
  bus.on('get', (d) => {
    bus.emit('response', { request: d.request, error: 'not cached' });
  });
  bus.on('response', (d) => {
    const p = pending.get(d.request);
    if (!p) return;
    pending.delete(d.request);
    stats.answered += 1;
    if (d.error !== undefined) {
      stats.errors += 1;
    } else if (p.data) {
      stats.data_reads += 1;
      const v = [d.data && d.data.conn, d.data && d.data.tick];
      const fromTheFuture = v[0] > conn || (v[0] === conn && v[1] >= tick);
      if (typeof v[0] !== 'number' || typeof v[1] !== 'number' || fromTheFuture || !newer(v, dataSeen)) {
        violation(`data read back: ${JSON.stringify(d.data)} at conn ${conn} tick ${tick}, after ${JSON.stringify(dataSeen)}`);
      } else {
        dataSeen = v;
      }
    } else if (d.data !== p.target) {
      violation(`get t from ${p.target} answered ${JSON.stringify(d.data)}`);
    }
  });
  setInterval(() => {
    const now = Date.now();
    for (const [req, p] of pending) {
      if (now - p.t0 > cfg.callDeadlineMs) {
        violation(`get ${req} from ${p.target}: no answer after ${now - p.t0} ms`);
        pending.delete(req);
      }
    }
    if (!connected) return;
    tick += 1;
    for (const t of cfg.targets) {
      seqTo[t] = (seqTo[t] || 0) + 1;
      bus.emit(`${t}:nseq`, { conn, seq: seqTo[t] });
      stats.sent += 1;
    }
    if (tick % 5 === 0 && cfg.targets.length > 0) {
      const target = cfg.targets[(tick / 5) % cfg.targets.length];
      const request = nextReq++;
      pending.set(request, { t0: now, target });
      stats.calls += 1;
      bus.emit('get', { from: target, type: 't', request, fresh: true });
    }
    if (tick % 10 === 0) {
      bus.emit('data', { type: 'd', id: cfg.id, data: { conn, tick }, time: 60 });
    }
    if (tick % 10 === 5) {
      const request = nextReq++;
      pending.set(request, { t0: now, target: cfg.id, data: true });
      stats.calls += 1;
      bus.emit('get', { from: cfg.id, type: 'd', id: cfg.id, request });
    }
  }, cfg.periodMs);
});

setInterval(() => out(Object.assign({ ev: 'stats', who: cfg.id }, stats)), 2000);

readline.createInterface({ input: process.stdin }).on('line', (l) => {
  if (!l.trim()) return;
  const c = JSON.parse(l);
  if (c.op === 'resume') pending.clear();
  if (c.op === 'finish') {
    out(Object.assign({ ev: 'final', who: cfg.id }, stats));
    process.exit(0);
  }
});
process.stdin.on('end', () => process.exit(0));
