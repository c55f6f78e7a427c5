// The Socket.IO baseline: a minimal socket.io@4 server that relays between two Socket.IO
// clients, as a supervisor process would. The client named `responder` (auth.name) answers;
// every other client's event with an ack is forwarded to it with emitWithAck and its answer
// returned as the ack.
//   node sio_baseline_server.js --port PORT
'use strict';
const { Server } = require('socket.io');
const arg = (k, d) => { const i = process.argv.indexOf('--' + k); return i > 0 ? process.argv[i + 1] : d; };
const io = new Server(Number(arg('port')), { transports: ['websocket', 'polling'] });
let responder = null;
io.on('connection', (socket) => {
  if (socket.handshake.auth && socket.handshake.auth.name === 'responder') {
    responder = socket;
    socket.on('disconnect', () => { if (responder === socket) responder = null; });
    return;
  }
  socket.onAny((event, ...args) => {
    const ack = typeof args[args.length - 1] === 'function' ? args.pop() : null;
    if (!ack) return;
    if (!responder) { ack({ error: 'no responder' }); return; }
    responder.timeout(30000).emit(event, args[0], (err, v) => ack(err ? { error: String(err) } : v));
  });
});
console.log('sio baseline: listening');
