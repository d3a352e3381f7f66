# The firmware's command line, part two (cli.py dispatches here): `trust` gives a device the
# gateway's downlink key, `status` prints the device's state as JSON. Its own module so that
# compiling cli.py from source (keygen, sign in a 48 KiB heap) stays small.

try:
    import json
except ImportError:
    import ujson as json

from anchor import Error
from anchor.cli import UsageError, _dir, _imports, _options


def trust(args):
    """Give an existing device the gateway's downlink key (DIR/gateway.json)."""
    opts = _options(args, ("dir", "downlink-key"))
    d = _dir(opts)
    if "downlink-key" not in opts:
        raise UsageError("--downlink-key HEX is required")
    if len(opts["downlink-key"]) != 130:
        raise Error("--downlink-key must be 130 hex digits (the key 'iot-anchor downlink key' "
                    "prints)")
    _imports("p256", "cbor", "cbor_types", "cbor_decode", "state", "p256_keys", "state_load")
    from anchor.state import Device

    dev = Device.load(d)
    _imports("p256_verify", "downlink_setup")
    from anchor.downlink_setup import trust as _trust

    _trust(dev, opts["downlink-key"])
    print("device state in %s now trusts gateway downlink key %s..." % (
        d, opts["downlink-key"][:16]))


def status(args):
    """Print status_info(DIR) as one JSON object."""
    opts = _options(args, ("dir",))
    print(json.dumps(status_info(_dir(opts))))


def status_info(d):
    """The device's state in DIR: dev, next_seq, outbox_waiting, outbox_dropped, last_command,
    downlink_refused (total) and downlink_refusals (by reason), downlink_top, outputs (Unix
    port: DIR/outputs/*), downlink_key (whether DIR/gateway.json is there)."""
    import os

    _imports("p256", "cbor", "cbor_types", "cbor_decode", "state", "p256_keys", "state_load")
    from anchor.state import Device

    dev = Device.load(d)
    from anchor.outbox_load import load_outbox

    ob = load_outbox(d)
    from anchor.downlink_setup import read_json

    s = read_json(d + "/downlink.json") or {}
    refused = s.get("refused") or {}
    outputs = {}
    try:
        names = os.listdir(d + "/outputs")
    except OSError:
        names = []
    for n in names:
        if not n.endswith(".tmp"):
            with open(d + "/outputs/" + n) as f:
                outputs[n] = f.read() == "1"
    return {
        "dev": dev.dev_id, "next_seq": dev.seq, "outbox_waiting": ob.pending,
        "outbox_dropped": ob.dropped, "last_command": s.get("last"),
        "downlink_refused": sum(refused.values()), "downlink_refusals": refused,
        "downlink_top": s.get("top", -1), "outputs": outputs,
        "downlink_key": read_json(d + "/gateway.json") is not None}
