// A real node-ipc@9.2.1 client that pipelines COUNT frames without waiting for anything:
// even n: event `<to>:seq {n}`; odd n: `get {from: <to>, type: "echo", request: n, id: "n",
// fresh: true}`. Then it waits for every get's response and prints one JSON line:
// {sent, responses, wrong, duplicates, errors, missing} (tests/bridge_batch.rs).
//   node pipeline.js --path SOCKET | --host H --port N  [--count 10000] [--to sink] [--id web]
'use strict';
const ipc = require('node-ipc');
const args = process.argv.slice(2);
const opt = (k, d) => { const i = args.indexOf('--' + k); return i < 0 ? d : args[i + 1]; };
const COUNT = Number(opt('count', 10000));
const TO = opt('to', 'sink');
const id = opt('id', 'web');
ipc.config.id = id;
ipc.config.silent = true;
ipc.config.retry = 100;

const seen = new Set();
let responses = 0, wrong = 0, duplicates = 0, errors = 0, started = false;
const gets = Math.floor(COUNT / 2);
function finish() {
  const missing = [];
  for (let n = 1; n < COUNT; n += 2) if (!seen.has(n)) missing.push(n);
  process.stdout.write(JSON.stringify({
    sent: COUNT, responses, wrong, duplicates, errors, missing: missing.slice(0, 20),
    missing_count: missing.length,
  }) + '\n');
  process.exit(0);
}
const go = () => {
  const s = ipc.of.bus;
  s.on('response', (d) => {
    responses++;
    if (seen.has(d.request)) duplicates++;
    seen.add(d.request);
    if (d.error !== undefined) errors++;
    else if (!d.data || d.data.n !== d.request) wrong++;
    if (responses === gets) finish();
  });
  s.on('connect', () => {
    s.emit('hello', { id });
    if (started) return;
    started = true;
    // Give the hello a moment to register, then everything in one go.
    setTimeout(() => {
      for (let n = 0; n < COUNT; n++) {
        if (n % 2 === 0) s.emit(TO + ':seq', { n });
        else s.emit('get', { from: TO, type: 'echo', request: n, id: String(n), fresh: true });
      }
    }, 300);
  });
};
if (opt('path')) ipc.connectTo('bus', opt('path'), go);
else ipc.connectToNet('bus', opt('host', '127.0.0.1'), Number(opt('port')), go);
setTimeout(finish, Number(opt('timeout-ms', 60000)));
