// A real ws@8 client driven by the Rust tests: one JSON command per stdin line, one JSON line
// on stdout per event.
//
// Commands:
//   {"op":"open","url":U,"headers":{..},"autoPong":true|false}
//   {"op":"send","text":S}          sends S as a text frame (JSON or garbage)
//   {"op":"pause"} | {"op":"resume"}  stops / resumes reading the socket
//   {"op":"close"} | {"op":"quit"}
// Events: {"ev":"open"}, {"ev":"message","data":<parsed JSON or the text>},
// {"ev":"ping"}, {"ev":"close","code":N}, {"ev":"unexpected-response","status":N},
// {"ev":"error","message":M}.
'use strict';
const WebSocket = require('ws');
const readline = require('readline');

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
let ws = null;

function command(c) {
  switch (c.op) {
    case 'open':
      ws = new WebSocket(c.url, [], {
        perMessageDeflate: false,
        headers: c.headers || {},
        autoPong: c.autoPong !== false,
      });
      ws.on('open', () => out({ ev: 'open' }));
      ws.on('message', (m) => {
        const t = m.toString();
        let data = t;
        try { data = JSON.parse(t); } catch (_) { /* keep text */ }
        out({ ev: 'message', data });
      });
      ws.on('ping', () => out({ ev: 'ping' }));
      ws.on('close', (code) => out({ ev: 'close', code }));
      ws.on('unexpected-response', (req, res) => {
        out({ ev: 'unexpected-response', status: res.statusCode });
        req.destroy();
      });
      ws.on('error', (e) => out({ ev: 'error', message: e.message }));
      break;
    case 'send':
      ws.send(c.text);
      break;
    case 'pause':
      ws.pause();
      break;
    case 'resume':
      ws.resume();
      break;
    case 'close':
      ws.close();
      break;
    case 'quit':
      process.exit(0);
      break;
    default:
      out({ ev: 'agent-error', message: 'unknown op ' + c.op });
  }
}

readline.createInterface({ input: process.stdin }).on('line', (l) => {
  if (!l.trim()) return;
  try { command(JSON.parse(l)); } catch (e) { out({ ev: 'agent-error', message: String(e && e.stack || e) }); }
});
process.stdin.on('end', () => process.exit(0));
