"""A real python-socketio 5 client driven by the Rust tests: one JSON command per stdin line,
one JSON line on stdout per event (the same protocol as agent.js / ws_agent.js).

Commands:
  {"op":"connect","url":U,"auth":{..},"transports":["polling"]|["websocket"]|null}
  {"op":"emit","event":E,"data":D}                 plain emit
  ... "binary":true on emit/call                   sends {"blob": <3 bytes>, "meta": D} (a binary attachment)
  {"op":"call","event":E,"data":D,"id":N}          emit with an ack callback -> {"ev":"ack","data":{"id":N,"value":V}}
  {"op":"answer","event":E,"value":V}              answer server emitWithAck(E, ..) with V
  {"op":"hang","event":E}                          never answer E (the handler blocks)
  {"op":"disconnect"} | {"op":"quit"}
Events: connect {sid}, connect_error {message}, disconnect, event {event, data}, ack {id, value}.
"""
import json
import sys
import threading
import time

import socketio

lock = threading.Lock()


def out(ev, data=None):
    with lock:
        sys.stdout.write(json.dumps({"ev": ev, "data": data}) + "\n")
        sys.stdout.flush()


sio = socketio.Client(reconnection=False)
answers = {}
hangs = set()


@sio.event
def connect():
    out("connect", {"sid": sio.get_sid()})


@sio.event
def connect_error(data):
    msg = data.get("message") if isinstance(data, dict) else data
    out("connect_error", {"message": msg})


@sio.event
def disconnect(*args):
    out("disconnect", {"reason": str(args[0]) if args else None})


@sio.on("*")
def any_event(event, *args):
    data = args[0] if len(args) == 1 else (list(args) if args else None)
    out("event", {"event": event, "data": data})
    if event in hangs:
        time.sleep(3600)
    if event in answers:
        return answers[event]
    return None


def data_of(c):
    if c.get("binary"):
        return {"blob": b"\x00\x01\xff", "meta": c.get("data")}
    return c.get("data")


def command(c):
    op = c["op"]
    if op == "connect":
        kw = {"auth": c.get("auth"), "wait_timeout": 10}
        if c.get("transports"):
            kw["transports"] = c["transports"]
        try:
            sio.connect(c["url"], **kw)
        except socketio.exceptions.ConnectionError as e:
            out("connect_failed", {"message": str(e)})
    elif op == "emit":
        sio.emit(c["event"], data_of(c))
    elif op == "call":
        n = c["id"]
        sio.emit(c["event"], data_of(c), callback=lambda *a: out("ack", {"id": n, "value": a[0] if len(a) == 1 else list(a)}))
    elif op == "answer":
        answers[c["event"]] = c.get("value")
        out("answering", {"event": c["event"]})
    elif op == "hang":
        hangs.add(c["event"])
        out("answering", {"event": c["event"]})
    elif op == "disconnect":
        sio.disconnect()
    elif op == "quit":
        sio.disconnect()
        sys.exit(0)
    else:
        out("agent-error", {"message": "unknown op " + op})


for line in sys.stdin:
    if not line.strip():
        continue
    try:
        command(json.loads(line))
    except SystemExit:
        raise
    except Exception as e:  # report, keep going
        out("agent-error", {"message": repr(e)})
try:
    sio.disconnect()
except Exception:
    pass
