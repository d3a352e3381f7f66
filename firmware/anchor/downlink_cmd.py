# Running a command from the gateway (anchor/<id>/cmd), once its MAC has been checked
# (device.Loop.open_sealed): its counter and id checked, the command carried out, its
# confirmation's payload written (DIR/confirm.cbor) and returned to the loop, which signs it
# with the device key (DIR/confirm.cose) once this module is dropped, and publishes it on
# anchor/<id>/confirm (QoS 1). A cold
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

try:
    import json
except ImportError:
    import ujson as json

from anchor import Error
from anchor.device import decode_ack
from anchor.state import write_atomic

CONFIRM_FILE = "confirm.cose"   # device.CONFIRM_FILE: the loop writes it once signed
PAYLOAD_FILE = "confirm.cbor"   # the confirmation's payload, written here
DOWNLINK_FILE = "downlink.json"


def _int(v, lo):
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def handle(loop, payload):
    """Run the command in payload (bytes, its MAC checked); its confirmation: the payload to
    sign, or (a command sent again) the signed message kept from the first time. ValueError
    (the refusal's reason: "replayed", "stale", or why it is malformed) when it is refused;
    nothing changes then."""
    d = loop.dev.dir + "/"
    st = load(d)
    m = decode_ack(payload, True)
    ctr = m.get("ctr")
    cid = m.get("id")
    op = m.get("op")
    args = m.get("args", {})
    if not (_int(ctr, 0) and _int(cid, 0) and isinstance(op, str) and isinstance(args, dict)):
        raise ValueError("bad command")
    loop.fresh(ctr)
    last = st.get("cmd", -1)
    if cid < last:
        raise ValueError("stale")
    if cid == last:
        p = _read(d + PAYLOAD_FILE)
        if p is None:
            raise ValueError("stale")   # its confirmation is gone: cannot confirm it again
        m = _read(d + CONFIRM_FILE)
        loop.out("cmd-again id=%d" % cid)
        # the signed confirmation when it is the one of this payload, else the payload again
        # (a power cut came between the two writes): the loop signs it
        return m if m is not None and p in m else p
    try:
        ok, res = True, _run(loop, op, args)
    except ValueError as e:
        ok, res = False, str(e)
    from anchor import cbor

    c = {"v": 1, "dev": loop.dev.dev_id, "cmd": cid, "op": op, "ok": ok}
    c["result" if ok else "reason"] = res
    p = cbor.encode(c)
    write_atomic(d + PAYLOAD_FILE, p)
    last = {"id": cid, "op": op, "args": args, "ok": ok}
    if not ok:
        last["reason"] = res
    save(loop, cid, last)
    loop.out("cmd id=%d op=%s ok=%d" % (cid, op, ok))
    # Signed by device.Loop.on_message once this module is dropped again: signing here, with
    # it loaded, needs ~3 KB more heap than a 48 KiB board has then.
    return p


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _run(loop, op, args):
    """Carry out one command; its result (a dict), or ValueError saying why it cannot."""
    if op == "ping":
        return {"seq": loop.dev.seq, "outbox": loop.outbox.pending}
    if op == "interval":
        s = args.get("seconds")
        if not _int(s, 1) or len(args) != 1:
            raise ValueError("bad args: seconds >= 1")
        loop.interval_ms = s * 1000
        return {"seconds": s}
    if op == "output":
        name = args.get("name")
        on = args.get("on")
        if not (isinstance(name, str) and 0 < len(name) <= 32 and all(
                47 < b < 58 or 64 < b < 91 or 96 < b < 123 or b in (45, 95)   # 0-9 A-Z a-z - _
                for b in name.encode())) or not isinstance(on, bool) or len(args) != 2:
            raise ValueError("bad args: name, on")
        set_output(loop, name, on)
        return {"name": name, "on": on}
    raise ValueError("unknown op")


def set_output(loop, name, on):
    """Switch output `name` on or off; ValueError when the board has no such output."""
    if loop.board.name == "unix":
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
    spec = loop.board.cfg.get("outputs", {}).get(name)
    if spec is None:
        raise ValueError("no output " + name)
    low = False
    if isinstance(spec, dict):
        low = bool(spec.get("active_low"))
        spec = spec.get("pin")
    import machine

    machine.Pin(spec, machine.Pin.OUT).value(bool(on) != low)


def load(d):
    """DIR/downlink.json as a dict ({} when there is none). d ends with "/"."""
    for p in (d + DOWNLINK_FILE, d + DOWNLINK_FILE + ".tmp"):
        try:
            with open(p) as f:
                return json.loads(f.read())
        except (OSError, ValueError):
            pass
    return {}


def save(loop, cmd=None, last=None):
    """Write DIR/downlink.json (atomically): the loop's window top and refusal counts, and the
    last command (cmd, last; None: keep the saved one). After a restart, counters up to this
    top are refused."""
    d = loop.dev.dir + "/"
    if cmd is None:
        st = load(d)
        cmd = st.get("cmd", -1)
        last = st.get("last")
    write_atomic(d + DOWNLINK_FILE, json.dumps({
        "v": 1, "top": loop.dl[1], "cmd": cmd, "last": last,     # device.Loop.dl: top,
        "refused": loop.dl[3]}).encode())                        # refusals
