// The baseline: a minimal Arthur-IPC style server on node-ipc@9.2.1, doing the work the bridge
// + hub do for a legacy website and a legacy bot: hello registers the socket, data is cached
// with Arthur's TTL, get is answered from the cache unless fresh, otherwise forwarded to the
// owner under the server's own request number, and the owner's response is cached and relayed
// under the requester's number. (What Arthur-IPC itself does, without its interval pushes.)
//   node baseline_server.js --path SOCKET | --port N
'use strict';
const ipc = require('node-ipc');
const args = process.argv.slice(2);
const opt = (k) => { const i = args.indexOf('--' + k); return i < 0 ? undefined : args[i + 1]; };

ipc.config.id = 'baseline';
ipc.config.silent = true;

const clients = new Map(); // id -> socket
const cache = new Map(); // from \0 type \0 id -> {data, expires}
const pending = new Map(); // server request -> {socket, request, key, time}
let next = 0;

function serve(server) {
  server.on('hello', (d, socket) => { clients.set(d.id, socket); socket.ipcId = d.id; });
  server.on('data', (d, socket) => {
    const key = socket.ipcId + '\0' + d.type + '\0' + (d.id === undefined ? '' : d.id);
    if (d.time < 0) { cache.delete(key); return; }
    cache.set(key, { data: d.data, expires: d.time > 0 ? Date.now() + d.time * 1000 : 0 });
  });
  server.on('get', (d, socket) => {
    const key = d.from + '\0' + d.type + '\0' + (d.id === undefined ? '' : d.id);
    if (!d.fresh) {
      const c = cache.get(key);
      if (c && (c.expires === 0 || c.expires > Date.now())) {
        server.emit(socket, 'response', { request: d.request, data: c.data });
        return;
      }
    }
    const owner = clients.get(d.from);
    if (!owner) {
      server.emit(socket, 'response', { request: d.request, error: 'owner ' + d.from + ' is not connected' });
      return;
    }
    const n = ++next;
    pending.set(n, { socket, request: d.request, key });
    server.emit(owner, 'get', { from: d.from, type: d.type, request: n, id: d.id, fresh: d.fresh });
  });
  server.on('response', (d) => {
    const p = pending.get(d.request);
    if (!p) return;
    pending.delete(d.request);
    if (d.error !== undefined) {
      server.emit(p.socket, 'response', { request: p.request, error: d.error });
      return;
    }
    if (!(d.time < 0)) {
      cache.set(p.key, { data: d.data, expires: d.time > 0 ? Date.now() + d.time * 1000 : 0 });
    }
    server.emit(p.socket, 'response', { request: p.request, data: d.data, time: d.time });
  });
  server.on('socket.disconnected', (socket) => {
    if (socket.ipcId && clients.get(socket.ipcId) === socket) clients.delete(socket.ipcId);
  });
}

if (opt('port')) {
  ipc.serveNet('127.0.0.1', Number(opt('port')), () => serve(ipc.server));
} else {
  ipc.serve(opt('path'), () => serve(ipc.server));
}
ipc.server.start();
process.on('SIGTERM', () => process.exit(0));
