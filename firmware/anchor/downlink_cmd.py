# Running a command from the gateway (anchor/<id>/cmd), once its MAC has been checked
# (device.Guard.open): its counter and id checked, the command carried out, its confirmation
# signed with the device key and handed to the loop's sender for anchor/<id>/confirm. A cold
# companion of device.py (device.COLD): device.Loop.on_message loads it for a command and
# drops it again. docs/protocol.md ("Commands") is the specification.
#
# Commands (op, args -> the confirmation's result):
#   interval  {"seconds": int >= 1}           the reading interval of the running loop
#   output    {"name": NAME, "on": bool}      a named output: on the Unix port the file
#             DIR/outputs/NAME ("1" or "0"); on ESP32 and RP2 the GPIO pin that the config
#             key "outputs" names ({"fan": 5} or {"fan": {"pin": 5, "active_low": true}})
#   ping      {}                              {"seq": next seq, "outbox": readings waiting}
# A command that cannot be carried out (unknown op, bad args, unknown output) is confirmed
# with ok false and a reason. Each one runs once: a command id at or below the last one run is
# not run again (the same id: its confirmation is sent again; a lower one: refused as stale).
# Every op is idempotent, so a power cut between running it and saving its id, which runs it
# again when the gateway repeats it, does no harm.

import os
import sys
import time

try:
    import json
except ImportError:
    import ujson as json

from anchor import Error, cbor
from anchor.device import decode_map
from anchor.state import write_atomic

CONFIRM_FILE = "confirm.cose"
_DOWNLINK_FILE = "downlink.json"   # device.DOWNLINK_FILE
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
_UNIX = sys.platform not in ("esp32", "rp2")


def _int(v, lo):
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def handle(loop, payload):
    """Run the command in payload (bytes, its MAC checked). ValueError (the refusal's reason:
    "replayed", "stale", or why it is malformed) when it is refused; nothing changes then."""
    g = loop.guard
    m = decode_map(payload)
    ctr = m.get("ctr")
    cid = m.get("id")
    op = m.get("op")
    args = m.get("args", {})
    if not (_int(ctr, 0) and _int(cid, 0) and isinstance(op, str) and isinstance(args, dict)):
        raise ValueError("bad command")
    g.fresh(ctr)
    if cid < g.cmd:
        raise ValueError("stale")
    d = loop.dev.dir + "/"
    if cid == g.cmd:
        try:
            with open(d + CONFIRM_FILE, "rb") as f:
                loop.confirm = f.read()
        except OSError:
            raise ValueError("stale")   # its confirmation is gone: cannot confirm it again
        g.unsaved += 1
        loop.out("cmd-again id=%d" % cid)
        loop.wake()
        return
    try:
        ok, res = True, _run(loop, op, args)
    except ValueError as e:
        ok, res = False, str(e)
    c = {"v": 1, "dev": loop.dev.dev_id, "cmd": cid, "op": op, "ok": ok}
    c["result" if ok else "reason"] = res
    msg = loop.dev.sign1(cbor.encode(c))
    write_atomic(d + CONFIRM_FILE, msg)
    g.cmd = cid
    g.last = {"id": cid, "op": op, "args": args, "ok": ok}
    if not ok:
        g.last["reason"] = res
    save(g)
    loop.confirm = msg
    loop.out("cmd id=%d op=%s ok=%d" % (cid, op, ok))
    loop.wake()


def _run(loop, op, args):
    """Carry out one command; its result (a dict), or ValueError saying why it cannot."""
    if op == "ping":
        return {"seq": loop.dev.seq, "outbox": loop.outbox.pending}
    if op == "interval":
        s = args.get("seconds")
        if not _int(s, 1) or len(args) != 1:
            raise ValueError("interval wants {\"seconds\": an integer >= 1}")
        loop.interval_ms = s * 1000
        return {"seconds": s}
    if op == "output":
        name = args.get("name")
        on = args.get("on")
        if not (isinstance(name, str) and 0 < len(name) <= 32
                and all(ch in _NAME_CHARS for ch in name)) or not isinstance(on, bool) \
                or len(args) != 2:
            raise ValueError("output wants {\"name\": 1 to 32 of A-Z a-z 0-9 _ -, \"on\": a "
                             "bool}")
        set_output(loop, name, on)
        return {"name": name, "on": on}
    raise ValueError("unknown op %s" % op)


def set_output(loop, name, on):
    """Switch output `name` on or off; ValueError when the board has no such output."""
    if _UNIX:
        d = loop.dev.dir + "/outputs"
        try:
            os.mkdir(d)
        except OSError:
            pass
        try:
            write_atomic(d + "/" + name, b"1" if on else b"0")
        except Error as e:
            raise ValueError("output %s: %s" % (name, e))
        return
    spec = (getattr(loop.board, "cfg", None) or {}).get("outputs", {}).get(name)
    if spec is None:
        raise ValueError("no output %s in the board config (key \"outputs\")" % name)
    low = False
    if isinstance(spec, dict):
        low = bool(spec.get("active_low"))
        spec = spec.get("pin")
    import machine

    machine.Pin(spec, machine.Pin.OUT).value(bool(on) != low)


def save(g):
    """Write DIR/downlink.json (atomically): top, the last command, the refusal counts.
    After a restart, counters up to this top are refused."""
    write_atomic(g.dir + "/" + _DOWNLINK_FILE, json.dumps({
        "v": 1, "top": g.top, "cmd": g.cmd, "last": g.last,
        "refused": g.refused}).encode())
    g.unsaved = 0
    g.dirty = False
    g.saved_at = time.ticks_ms()
