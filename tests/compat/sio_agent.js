// A real socket.io-client@4.8 driven by the Rust tests: the same stdin/stdout JSON-lines
// protocol as sio_agent.py (connect, emit, call, answer, hang, disconnect, quit).
'use strict';
const { io } = require('socket.io-client');
const readline = require('readline');

const out = (ev, data) => process.stdout.write(JSON.stringify({ ev, data: data === undefined ? null : data }) + '\n');
let socket = null;
const answers = new Map();
const hangs = new Set();

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
      socket.emit(c.event, c.data);
      break;
    case 'call':
      socket.emit(c.event, c.data, (v) => out('ack', { id: c.id, value: v }));
      break;
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
