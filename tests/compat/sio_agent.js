// A real socket.io-client@4.8 driven by the Rust tests: the same stdin/stdout JSON-lines
// protocol as sio_agent.py (connect, emit, call, answer, hang, disconnect, quit), plus
// flood: `count` events `event` of {seq, pad: `size` chars}, every `ack_every`-th with an ack
// (its value must be the seq) -> `flooded {count}` once queued, `flood_acked {acks}` once
// every ack came back (or `flood_bad_ack {seq, value}`).
'use strict';
const { io } = require('socket.io-client');
const readline = require('readline');

const out = (ev, data) => process.stdout.write(JSON.stringify({ ev, data: data === undefined ? null : data }) + '\n');
let socket = null;
const answers = new Map();
const hangs = new Set();

// With c.binary, the data rides next to a binary attachment.
function dataOf(c) {
  return c.binary ? { blob: Buffer.from([0, 1, 255]), meta: c.data } : c.data;
}

function command(c) {
  switch (c.op) {
    case 'connect': {
      const opts = { auth: c.auth || {}, reconnection: false };
      if (c.transports) opts.transports = c.transports;
      socket = io(c.url, opts);
      socket.on('connect', () => out('connect', { sid: socket.id }));
      socket.on('connect_error', (e) => out('connect_error', { message: e.message }));
      socket.on('disconnect', (reason) => out('disconnect', { reason }));
      socket.onAny((event, ...args) => {
        let cb = null;
        if (args.length && typeof args[args.length - 1] === 'function') cb = args.pop();
        out('event', { event, data: args.length === 1 ? args[0] : (args.length ? args : null) });
        if (cb && !hangs.has(event)) cb(answers.has(event) ? answers.get(event) : null);
      });
      break;
    }
    case 'emit':
      socket.emit(c.event, dataOf(c));
      break;
    case 'call':
      socket.emit(c.event, dataOf(c), (v) => out('ack', { id: c.id, value: v }));
      break;
    case 'flood': {
      const pad = 'x'.repeat(c.size || 0);
      const every = c.ack_every || 0;
      let want = 0, got = 0, done = false;
      for (let i = 0; i < c.count; i++) {
        const data = { seq: i, pad };
        if (every && i % every === every - 1) {
          want++;
          socket.emit(c.event, data, (v) => {
            if (v !== i) out('flood_bad_ack', { seq: i, value: v });
            got++;
            if (done && got === want) out('flood_acked', { acks: got });
          });
        } else {
          socket.emit(c.event, data);
        }
      }
      done = true;
      out('flooded', { count: c.count });
      if (want && got === want) out('flood_acked', { acks: got });
      break;
    }
    case 'answer':
      answers.set(c.event, c.value);
      out('answering', { event: c.event });
      break;
    case 'hang':
      hangs.add(c.event);
      out('answering', { event: c.event });
      break;
    case 'disconnect':
      socket.disconnect();
      break;
    case 'quit':
      if (socket) socket.disconnect();
      process.exit(0);
      break;
    default:
      out('agent-error', { message: 'unknown op ' + c.op });
  }
}

readline.createInterface({ input: process.stdin }).on('line', (l) => {
  if (!l.trim()) return;
  try { command(JSON.parse(l)); } catch (e) { out('agent-error', { message: String(e && e.stack || e) }); }
});
process.stdin.on('end', () => process.exit(0));
