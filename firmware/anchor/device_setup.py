# Setting up the device loop (start-up): the `run` options parsed (device.py documents the
# command line), the board, device state, outbox and MQTT client built, and the Loop itself
# (make_loop). A cold companion of device.py (device.COLD): device.main and startup.main drop it
# before the loop runs, so its code takes no RAM then.

import sys

from anchor import Error, unload

USAGE = """usage: micropython main.py run --dir DIR [--broker mqtt://[USER:PASS@]HOST:PORT]
    [--interval S] [--count N] [--timeout S] [--ack-timeout S] [--outbox-max N]
    [--keepalive S]"""

OPTIONS = {
    # name: (type, default)
    "dir": (str, None),
    "broker": (str, None),
    "interval": (float, 60.0),
    "count": (int, None),
    "timeout": (float, 120.0),
    "ack-timeout": (float, 30.0),
    "outbox-max": (int, 1000),
    "keepalive": (int, 30),
}


def parse_args(args):
    """--name value pairs -> dict with every OPTIONS key. Raises Error naming the bad one."""
    opts = {k: v[1] for k, v in OPTIONS.items()}
    i = 0
    while i < len(args):
        a = args[i]
        name = a[2:] if a.startswith("--") else None
        if name not in OPTIONS:
            raise Error("run: unknown argument %r\n%s" % (a, USAGE))
        if i + 1 >= len(args):
            raise Error("run: %s needs a value\n%s" % (a, USAGE))
        typ = OPTIONS[name][0]
        try:
            v = typ(args[i + 1])
        except ValueError:
            raise Error("run: %s wants a number, not %r" % (a, args[i + 1]))
        if typ is not str and v < 0:
            raise Error("run: %s must not be negative" % a)
        opts[name] = v
        i += 2
    if not opts["dir"]:
        import os

        opts["dir"] = os.getenv("IOT_ANCHOR_DEVICE_DIR")
        if not opts["dir"]:
            raise Error("run: --dir DIR is required (the directory made by keygen)")
    if not opts["broker"]:
        import os

        opts["broker"] = os.getenv("IOT_ANCHOR_BROKER") or "mqtt://127.0.0.1:1883"
    if opts["count"] is not None and opts["count"] < 1:
        raise Error("run: --count must be at least 1")
    if opts["outbox-max"] < 1:
        raise Error("run: --outbox-max must be at least 1")
    return opts


def _tls_context(d):
    """An SSLContext that verifies the broker against DIR/ca.pem (or ca.der): the CA that signed
    the broker's certificate. Untested here: this Unix build has no ssl module."""
    try:
        import ssl
    except ImportError:
        raise Error("mqtts:// needs a firmware with the ssl module, and this one has none; "
                    "use mqtt:// or a build with ssl")
    for name in ("ca.pem", "ca.der"):
        try:
            with open(d + "/" + name, "rb") as f:
                ca = f.read()
        except OSError:
            continue
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=ca)
        return ctx
    raise Error("mqtts:// needs the broker's CA certificate in %s/ca.pem (or ca.der) to check "
                "the broker; copy it there" % d)


def build(opts, board=None):
    """Board, Device, Outbox and MQTT client for the options of parse_args()."""
    # One part after the other, the cold modules dropped once each is used (unload()), so that
    # they are never all in RAM at once (this start-up is the heap's peak otherwise).
    from anchor import mqtt_setup

    try:
        host, port, tls, user, password = mqtt_setup.parse_url(opts["broker"])
    except ValueError as e:
        raise Error(str(e))
    mqtt_setup = None
    unload()
    if board is None:
        from anchor.board import Board

        board = Board({"dir": opts["dir"], "id": None})
        Board = None
        unload()            # board.py (device.COLD) goes; the chosen layer (board_unix, ...) stays
    d = opts["dir"]
    # What the loop signs with (state.py imports cose on first use): loaded now, before the
    # device state, so that its code and p256's lie together, not in the holes the start-up
    # modules leave (then cose's largest piece of bytecode, ~0.4 KB, found no room in a
    # 48 KiB heap).
    from anchor import cose  # noqa: F401
    from anchor.state import Device

    dev = Device.load(d)    # the heaviest step (the comb table is filled): with little loaded
    unload()
    guard = downlink_state(dev)  # the MAC key kept in DIR/gateway.json (ECDH once per pair)
    unload()
    if hasattr(board, "seed"):
        board.seed(dev.dev_id)
    from anchor import mqtt_setup

    try:
        # Two readings in flight at most (each is held until its PUBACK): enough to keep the
        # link busy, and a backlog replayed after an outage does not pile up in RAM.
        client = mqtt_setup.make_client(dev.dev_id, host, port, keepalive=opts["keepalive"],
                                        ssl=_tls_context(d) if tls else None, user=user,
                                        password=password, wait_network=board.network_up,
                                        max_inflight=2)
    except ValueError as e:
        raise Error(str(e))
    mqtt_setup = None
    unload()
    from anchor.outbox_load import load_outbox

    # 32 readings a segment (not 64): each live segment's index arrays are preallocated (11
    # bytes a reading), and a device that keeps up has one segment live.
    ob = load_outbox(d, max_records=opts["outbox-max"], seg_records=32)
    load_outbox = None
    unload()
    # The general CBOR decoder (cbor_decode, which Device.load used for last.cose) is not kept: acks
    # are decoded by device._item.
    return board, dev, ob, client, guard


def _read_json(path):
    """The JSON object in path (or its .tmp copy, see state.py), None when there is none;
    Error when it is damaged."""
    import json

    for p in (path, path + ".tmp"):
        try:
            with open(p) as f:
                text = f.read()
        except OSError:
            continue
        try:
            v = json.loads(text)
        except ValueError:
            v = None
        if not isinstance(v, dict):
            raise Error("%s is damaged; remove it (for gateway.json: give the key again with "
                        "'main.py trust')" % p)
        return v
    return None


def downlink_state(dev):
    """(MAC key, window top, refusal counts) of device dev (a state.Device) for make_loop: the
    key from DIR/gateway.json (derived there by downlink_setup when missing or made for another
    device key), the rest from DIR/downlink.json. Error when the gateway key is missing or
    unusable."""
    from binascii import unhexlify
    from hashlib import sha256

    d = dev.dir
    gj = _read_json(d + "/gateway.json")
    h = "".join("%02x" % b for b in sha256(dev.public_key).digest()[:8])
    if gj is not None and gj.get("for") == h and len(gj.get("mac", "")) == 64:
        key = unhexlify(gj["mac"])
    else:   # no MAC key yet, or one made for another device key: derive it once, keep it
        from anchor import downlink_setup

        key = downlink_setup.rederive(dev)
        downlink_setup = None
        unload("downlink_setup")
    s = _read_json(d + "/downlink.json") or {}
    return key, s.get("top", -1), s.get("refused") or {}


def start(args):
    """`run`'s options parsed and its objects built: (device.Loop, opts), or 2 after printing a
    usage error."""
    try:
        opts = parse_args(args)
    except Error as e:      # a usage error: exit 2, as main.py does for its own
        print("error: %s" % e, file=sys.stderr)
        return 2
    board, dev, ob, client, guard = build(opts)
    loop = make_loop(board, dev, ob, client, guard, interval=opts["interval"],
                     count=opts["count"], timeout=opts["timeout"],
                     ack_timeout=opts["ack-timeout"])
    requeue_last(loop)
    return loop, opts


def requeue_last(loop):
    """After a crash between signing and appending: the last signed message is in the
    device state (last.cose) but not in the outbox. Queue it again (a duplicate, should it
    have been queued after all, is harmless: the gateway deduplicates and acks it). True if
    it was queued. Start-up code (start, startup.main), so not in device.Loop."""
    dev, ob = loop.dev, loop.outbox
    last = dev.seq - 1
    if dev.last_message is not None and last > ob.last_seq and last > ob.upto:
        ob.append(last, dev.last_message)
        return True
    return False


def make_loop(board, dev, outbox, client, guard, interval=60, count=None, timeout=120,
              ack_timeout=30, out=print):
    """A new device.Loop (device.py documents it): `board` a board layer, `dev` a
    state.Device, `outbox` an outbox.Outbox, `client` an mqtt.MQTTClient (or what has their
    methods), `guard` the device's downlink state (downlink_state(dev)). Sets the loop's
    settings and counters, and its client's will, birth message, ack and command subscriptions
    and message handler. interval, timeout, ack_timeout in seconds; out(line) prints the loop's
    event lines."""
    from anchor.device import Loop

    loop = Loop()           # device.Loop lists these attributes
    loop.board = board
    loop.dev = dev
    loop.outbox = outbox
    loop.client = client
    loop.interval_ms = int(interval * 1000)
    loop.count = count
    loop.timeout_ms = int(timeout * 1000)
    loop.ack_ms = int(ack_timeout * 1000)
    loop.out = out
    prefix = "anchor/%s/" % dev.dev_id
    loop.t_readings = prefix + "readings"
    loop.t_ack = prefix + "ack"
    loop.t_status = prefix + "status"
    key, top, refused = guard
    # device.Loop.dl: key, window top and bitmap, refusals, confirmations waiting; after a
    # restart every counter up to top counts as seen (0x3FFFFFFF: device._MASK)
    loop.dl = [key, top, 0x3FFFFFFF if top >= 0 else 0, refused, []]
    loop.produced = 0
    loop.acked = 0
    loop.published = 0
    loop.republished = 0
    loop.heap_max = 0
    loop.heap_end = 0
    loop.crash = None
    loop.done = False
    loop.kick = False
    loop.announced = dev.seq - 1
    loop.idle = False
    loop.stop = False
    client.set_last_will(loop.t_status, b"offline", retain=True, qos=1)
    client.set_birth(loop.t_status, b"online", retain=True, qos=1)
    client.on_message = loop.on_message
    client.subscribe(loop.t_ack, 1)
    client.subscribe(prefix + "cmd", 1)
    return loop
