# Running a command from the gateway (anchor/<id>/cmd), once its MAC has been checked
# (device.Loop.open_sealed): its counter and id checked, the command carried out, its confirmation
# signed with the device key and published on anchor/<id>/confirm (QoS 1, by a task of its own;
# if that fails the gateway sends the command again, and the device its confirmation again). A cold
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

CONFIRM_FILE = "confirm.cose"
DOWNLINK_FILE = "downlink.json"
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


def _int(v, lo):
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def handle(loop, payload):
    """Run the command in payload (bytes, its MAC checked). ValueError (the refusal's reason:
    "replayed", "stale", or why it is malformed) when it is refused; nothing changes then."""
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
        try:
            with open(d + CONFIRM_FILE, "rb") as f:
                msg = f.read()
        except OSError:
            raise ValueError("stale")   # its confirmation is gone: cannot confirm it again
        loop.out("cmd-again id=%d" % cid)
        publish(loop, msg)
        return
    try:
        ok, res = True, _run(loop, op, args)
    except ValueError as e:
        ok, res = False, str(e)
    from anchor import cbor, cose  # here: save() runs once the loop dropped the encoder

    c = {"v": 1, "dev": loop.dev.dev_id, "cmd": cid, "op": op, "ok": ok}
    c["result" if ok else "reason"] = res
    msg = cose.sign1(_secret(d), loop.dev.dev_id.encode(), cbor.encode(c))
    write_atomic(d + CONFIRM_FILE, msg)
    last = {"id": cid, "op": op, "args": args, "ok": ok}
    if not ok:
        last["reason"] = res
    save(loop, cid, last)
    loop.out("cmd id=%d op=%s ok=%d" % (cid, op, ok))
    publish(loop, msg)


def publish(loop, msg):
    """Publish a confirmation on anchor/<id>/confirm in a task of its own (handle runs in the
    MQTT client's reader, which must not wait for a PUBACK). DIR/confirm.cose keeps it."""
    import asyncio

    async def send():
        try:
            await loop.client.publish("anchor/%s/confirm" % loop.dev.dev_id, msg, qos=1)
        except OSError:
            pass        # the gateway sends the command again; then this confirmation again

    try:
        asyncio.create_task(send())
    except RuntimeError:
        pass            # no event loop (a test calling on_message directly)


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
        raise ValueError("no output %s in the board config (key \"outputs\")" % name)
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
        "v": 1, "top": loop.dl_top, "cmd": cmd, "last": last,
        "refused": loop.refused}).encode())


def _secret(d):
    """The device's private scalar, read from DIR/key.json (the loop keeps it private to
    state.Device; a command is rare)."""
    from binascii import unhexlify

    from anchor.p256_keys import secret_from_bytes
    from anchor.state import KEY_FILE

    with open(d + KEY_FILE) as f:
        return secret_from_bytes(unhexlify(json.loads(f.read())["secret"]))
