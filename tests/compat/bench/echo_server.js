// The reference for pingpong.js: a node-ipc@9.2.1 server that answers `rust:ping` itself with
// `legacy:pong` (one node-ipc hop, no bus), to show what node-ipc alone costs.
//   node echo_server.js --path SOCKET
'use strict';
const ipc = require('node-ipc');
const args = process.argv.slice(2);
const opt = (k) => { const i = args.indexOf('--' + k); return i < 0 ? undefined : args[i + 1]; };
ipc.config.id = 'echo';
ipc.config.silent = true;
ipc.serve(opt('path'), () => {
  ipc.server.on('rust:ping', (d, socket) => ipc.server.emit(socket, 'legacy:pong', d));
});
ipc.server.start();
process.on('SIGTERM', () => process.exit(0));
