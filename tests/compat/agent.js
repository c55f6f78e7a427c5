// A real node-ipc@9.2.1 client driven by the Rust tests: one JSON command per stdin line, one
// JSON line on stdout per event received.
//
// Commands:
//   {"op":"connect","id":ID,"path":P} | {"op":"connect","id":ID,"host":H,"port":N}
//       optional: "intervals":[..], "hello":false (no automatic hello), "retry":ms,
//       "maxRetries":n, "helloExtra":{..} (more fields of the hello data, e.g. token).
//       Like Arthur's clients, it says hello {id, intervals} on every connect
//       (so also after node-ipc's own reconnect).
//   {"op":"emit","type":T,"data":D}      ipc.of.bus.emit(T, D)
//   {"op":"raw","text":S}                writes S to the socket as is (malformed/split frames)
//   {"op":"flood","type":T,"count":N,"size":S}  emits N events T with data {seq: i, pad: S bytes}
//   {"op":"pause"} | {"op":"resume"}     stops / resumes reading the socket (a client that does
//                                        not read)
//   {"op":"end"}                         half-closes the socket (SHUT_WR); it still reads
//   {"op":"serve","type":T,"data":D,"time":S} | {"op":"serve","type":T,"error":E}
//       answers bus gets of type T; an object D gets "n": how many times T was served
//   {"op":"quit"}
// Events printed: {"ev":TYPE,"data":DATA} for every event node-ipc publishes (connect,
// disconnect, error, get, response, data, and any custom type).
'use strict';
const ipc = require('node-ipc');
const readline = require('readline');

ipc.config.silent = true;
ipc.config.id = 'agent';
ipc.config.retry = 100;

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const serving = {};
const served = {};
let bus = null;
let cfg = null;

function attach(sock) {
  // Every event node-ipc publishes to the application (event-pubsub's '*' is broken on
  // Node >= 10 in 4.3.0, so we look at publish itself).
  const publish = sock.publish;
  sock.publish = function (type, data, ...rest) {
    if (type === 'error' && data instanceof Error) {
      out({ ev: 'socket-error', data: { message: data.message, code: data.code } });
    } else {
      out({ ev: type, data: data === undefined ? null : data });
    }
    return publish.call(this, type, data, ...rest);
  };
  sock.on('connect', () => {
    if (cfg.hello !== false) {
      sock.emit('hello', Object.assign({ id: cfg.id, intervals: cfg.intervals || [] },
        cfg.helloExtra || {}));
    }
  });
  sock.on('get', (d) => {
    const s = serving[d.type];
    if (!s) return;
    served[d.type] = (served[d.type] || 0) + 1;
    if (s.error !== undefined) {
      sock.emit('response', { request: d.request, error: s.error });
      return;
    }
    let data = s.data;
    if (data && typeof data === 'object' && !Array.isArray(data)) {
      data = Object.assign({}, data, { n: served[d.type], key: d.id === undefined ? null : d.id });
    }
    const r = { request: d.request, data };
    if (s.time !== undefined) r.time = s.time;
    sock.emit('response', r);
  });
}

function command(c) {
  switch (c.op) {
    case 'connect': {
      cfg = c;
      ipc.config.id = c.id;
      if (c.retry !== undefined) ipc.config.retry = c.retry;
      if (c.maxRetries !== undefined) ipc.config.maxRetries = c.maxRetries;
      const ready = () => { bus = ipc.of.bus; attach(bus); };
      if (c.path) ipc.connectTo('bus', c.path, ready);
      else ipc.connectToNet('bus', c.host, c.port, ready);
      break;
    }
    case 'emit':
      bus.emit(c.type, c.data);
      break;
    case 'raw':
      bus.socket.write(c.text);
      break;
    case 'flood': {
      const pad = 'x'.repeat(c.size || 0);
      for (let i = 0; i < c.count; i++) bus.emit(c.type, { seq: i, pad });
      out({ ev: 'flooded', data: { count: c.count } });
      break;
    }
    case 'pause':
      bus.socket.pause();
      break;
    case 'resume':
      bus.socket.resume();
      break;
    case 'end':
      bus.socket.end();
      out({ ev: 'ended', data: null });
      break;
    case 'serve':
      serving[c.type] = c;
      break;
    case 'quit':
      process.exit(0);
      break;
    default:
      out({ ev: 'agent-error', data: { message: 'unknown op ' + c.op } });
  }
}

readline.createInterface({ input: process.stdin }).on('line', (l) => {
  if (!l.trim()) return;
  try {
    command(JSON.parse(l));
  } catch (e) {
    out({ ev: 'agent-error', data: { message: String(e && e.stack || e) } });
  }
});
process.stdin.on('end', () => process.exit(0));
