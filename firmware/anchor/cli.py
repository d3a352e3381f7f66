# The command line of firmware/main.py on the Unix port: keygen and sign (and usage errors), and
# the output of `run` once its loop is over (run_finish).
# main.py documents the commands. `run` (the device loop) is anchor/device.py; main.py drops this
# module before starting it, so its code takes no RAM while the loop runs.
#
# Memory. Run from the .py sources, every module is compiled at start, and compiling one needs
# several times its bytecode in free heap for a moment (its whole parse tree; 11-20 KB for our
# modules on a 64-bit port). keygen and sign must work in a 48 KiB heap (issue 2) that way too,
# so _imports() compiles the biggest modules first, while little is held, with a collection
# between them; sign loads the device (start-up code: state_load, p256_keys, the CBOR
# decoder), drops that code, and only then compiles cose.py (state.py imports it on first use).

import sys
from binascii import hexlify

try:
    import json
except ImportError:
    import ujson as json

from anchor import Error, unload

USAGE = """usage:
  micropython main.py keygen --dir DIR [--id DEVICE_ID] [--secret HEX64] [--downlink-key HEX]
  micropython main.py trust --dir DIR --downlink-key HEX
  micropython main.py sign --dir DIR --data JSON [--ts UNIX_SECONDS|none]
  micropython main.py status --dir DIR
  micropython main.py run --dir DIR [...]   (the device loop)
--dir defaults to $IOT_ANCHOR_DEVICE_DIR. --downlink-key: the gateway's downlink key, 130 hex
digits, as 'iot-anchor downlink key' prints it (the device then checks acks and commands)."""


class UsageError(Error):
    pass


class _Help(Exception):
    pass


def _options(args, allowed):
    """--name value pairs -> dict. allowed: the option names (without --)."""
    opts = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-h", "--help"):
            raise _Help()
        if not a.startswith("--") or a[2:] not in allowed:
            raise UsageError("unknown argument %r" % a)
        if i + 1 >= len(args):
            raise UsageError("%s needs a value" % a)
        opts[a[2:]] = args[i + 1]
        i += 2
    return opts


def _dir(opts):
    d = opts.get("dir")
    if not d:
        try:
            import os

            d = os.getenv("IOT_ANCHOR_DEVICE_DIR")
        except (ImportError, AttributeError):
            d = None
    if not d:
        raise UsageError("--dir DIR is required")
    return d.rstrip("/") or "/"


def _imports(*names):
    import gc

    for n in names:
        gc.collect()
        __import__("anchor." + n)
    gc.collect()


def keygen(args):
    _imports("p256", "state", "state_create", "p256_keys")
    from anchor.state import Device

    opts = _options(args, ("dir", "id", "secret", "downlink-key"))
    d = _dir(opts)
    key = opts.get("downlink-key")
    if key is not None and len(key) != 130:     # checked before anything is written
        raise Error("--downlink-key must be 130 hex digits (the key 'iot-anchor downlink key' "
                    "prints)")
    dev = Device.create(d, dev_id=opts.get("id"), secret=opts.get("secret"))
    if key is not None:
        unload("state_create")
        _imports("p256_verify", "downlink_setup")
        from anchor.downlink_setup import trust

        trust(dev, key)
    print("device %s, state in %s" % (dev.dev_id, d))
    print(hexlify(dev.public_key).decode())


def _parse_data(text):
    t = text.strip()
    try:
        if not (t.startswith("{") and t.endswith("}")):
            raise ValueError
        data = json.loads(t)
    except ValueError:
        raise Error('--data is not a JSON object (expected e.g. {"temp": 21.5}): %s' % text)
    if not isinstance(data, dict):
        raise Error('--data is not a JSON object (expected e.g. {"temp": 21.5})')
    return data


def sign(args):
    _imports("p256", "cbor", "cbor_types", "cbor_decode", "state", "p256_keys", "state_load")
    from anchor.state import Device, unix_time

    opts = _options(args, ("dir", "data", "ts"))
    d = _dir(opts)
    if "data" not in opts:
        raise UsageError("--data JSON is required")
    data = _parse_data(opts["data"])
    ts = opts.get("ts")
    if ts is None:
        ts = unix_time()
    elif ts == "none":
        ts = None
    else:
        try:
            ts = int(ts)
        except ValueError:
            raise Error("--ts must be unix seconds or 'none', not %r" % ts)
    dev = Device.load(d)
    unload()  # the cold modules Device.load used: not needed to sign
    _imports("cose")
    msg = dev.next_reading(data, ts)
    print("device %s, seq %d, %d bytes" % (dev.dev_id, dev.seq - 1, len(msg)))
    print(hexlify(msg).decode())


COMMANDS = {"keygen": keygen, "sign": sign}
MORE = ("trust", "status")  # in cli_downlink.py: compiling this module from source stays small


def main(argv):
    """Run keygen or sign; returns the process exit status, or None for "run" (main.py then
    starts the device loop itself, after dropping this module from RAM)."""
    try:
        if not argv:
            raise UsageError("no command given")
        if argv[0] in ("-h", "--help", "help"):
            raise _Help()
        if argv[0] == "run":
            if "-h" in argv or "--help" in argv:
                from anchor.device_setup import USAGE as RUN_USAGE

                print(RUN_USAGE)
                return 0
            return None
        cmd = COMMANDS.get(argv[0])
        if argv[0] in MORE:
            from anchor import cli_downlink

            cmd = getattr(cli_downlink, argv[0])
        if cmd is None:
            raise UsageError("unknown command %r" % argv[0])
        return cmd(argv[1:]) or 0
    except _Help:
        print(USAGE)
        return 0
    except UsageError as e:
        print("error: %s" % e, file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    except Error as e:
        print("error: %s" % e, file=sys.stderr)
        return 1


def run_summary(loop, ok):
    """The JSON summary line of a finished loop (device.py documents its keys)."""
    import json

    ob = loop.outbox
    return json.dumps({
        "dev": loop.dev.dev_id, "produced": loop.produced, "acked": loop.acked,
        "outbox": ob.pending, "dropped": ob.dropped, "seq": loop.dev.seq,
        "published": loop.published, "republished": loop.republished,
        "connects": loop.client.connects, "heap_max": loop.heap_max,
        "heap_end": loop.heap_end, "ack_wait_ms": loop.ack_wait(), "ok": ok,
        "error": loop.crash})


def run_finish(loop, opts, ok):
    """After `run`'s loop (device.main): the downlink state saved (the window's top, the
    refusal counts: downlink_cmd.save), why it failed (stderr), the summary (stdout); returns
    the exit status. Here, loaded once the loop is over, so that it takes no RAM while it runs."""
    try:
        from anchor import downlink_cmd

        downlink_cmd.save(loop)
    except (Error, MemoryError):
        pass        # the counts since the last command are lost; nothing else depends on them
    downlink_cmd = None
    unload("downlink_cmd")
    if loop.crash is not None:
        print("error: the device loop stopped: %s; the outbox keeps every unacknowledged "
              "reading, run again to resume" % loop.crash, file=sys.stderr)
    elif not ok:
        from anchor.mqtt_setup import redact_url

        print("error: timed out after %g s waiting for acks: %d readings still waiting in the "
              "outbox; check that the gateway (iot-anchor run) is running and uses broker %s"
              % (opts["timeout"], loop.outbox.pending, redact_url(opts["broker"])), file=sys.stderr)
    print(run_summary(loop, ok))
    return 0 if ok else 1
