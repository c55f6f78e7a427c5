// A legacy bot on node-ipc@9.2.1: says hello and answers every get with a small JSON value
// that is not to be cached (time -1), like a bot serving live stats.
//   node bot.js --path SOCKET | --host H --port N   [--id bot] [--size BYTES]
'use strict';
const ipc = require('node-ipc');
const args = process.argv.slice(2);
const opt = (k, d) => { const i = args.indexOf('--' + k); return i < 0 ? d : args[i + 1]; };
const id = opt('id', 'bot');
ipc.config.id = id;
ipc.config.silent = true;
ipc.config.retry = 100;
const pad = 'x'.repeat(Number(opt('size', 64)));
let served = 0;
const go = () => {
  const s = ipc.of.bus;
  s.on('connect', () => s.emit('hello', { id }));
  s.on('get', (d) => {
    served++;
    s.emit('response', { request: d.request, data: { guilds: 1234, users: 56789, served, pad }, time: -1 });
  });
};
if (opt('path')) ipc.connectTo('bus', opt('path'), go);
else ipc.connectToNet('bus', opt('host', '127.0.0.1'), Number(opt('port')), go);
process.on('SIGTERM', () => process.exit(0));
