// The baseline's responder: a socket.io-client that answers every emitWithAck with its
// argument.   node sio_responder.js --url http://127.0.0.1:PORT
'use strict';
const { io } = require('socket.io-client');
const arg = (k, d) => { const i = process.argv.indexOf('--' + k); return i > 0 ? process.argv[i + 1] : d; };
const s = io(arg('url'), { transports: ['websocket'], auth: { name: 'responder' } });
s.onAny((event, ...args) => {
  const cb = typeof args[args.length - 1] === 'function' ? args.pop() : null;
  if (cb) cb(args[0]);
});
s.on('connect', () => console.log('sio responder: connected'));
