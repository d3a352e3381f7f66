# The downlink at start-up: the gateway's downlink key (DIR/gateway.json), the MAC key derived
# from it and the device key, and the state saved in DIR/downlink.json (the replay window's top,
# the last command, the refusal counts). A cold companion of device.py (device.COLD):
# device_setup.downlink_state loads it only when DIR/gateway.json has no MAC key for the
# device's key.
#
#   DIR/gateway.json   {"v": 1, "downlink": 130 hex, "mac": 64 hex, "for": 16 hex}
#                      the gateway's P-256 downlink public key (keygen --downlink-key,
#                      `main.py trust`, `iot-anchor device provision`), and the MAC key derived
#                      from it and the device key whose SHA-256 starts with "for": the ECDH is
#                      done once per pair of keys, when the key is given (a CLI command, or
#                      the first start after it changed), not at every start of the loop (it
#                      needs ~3 KB more heap than the 48 KiB loop has to spare on a board). The
#                      MAC key is no more secret than key.json next to it.
#   DIR/downlink.json  {"v": 1, "top": N, "cmd": ID, "last": {...} | null, "refused": {...}}
#                      written by downlink_cmd.save
#
# The key: Z = the x coordinate of d * Q (d the device's secret, Q the gateway's downlink key,
# checked to be on P-256), then HKDF-SHA-256 (RFC 5869) with salt "iot-anchor downlink v1",
# info the device id, 32 bytes: K = HMAC(PRK, info || 0x01), PRK = HMAC(salt, Z).

from binascii import unhexlify

try:
    import json
except ImportError:
    import ujson as json

from anchor import Error
from anchor.p256 import hmac_sha256

GATEWAY_FILE = "gateway.json"
SALT = b"iot-anchor downlink v1"


def hkdf(z, info):
    """HKDF-SHA-256 with SALT, 32 bytes of output (one block)."""
    return hmac_sha256(hmac_sha256(SALT, z), info, b"\x01")


def derive_key(secret, dev_id, gateway_pub):
    """The 32-byte MAC key of device dev_id (str) with private scalar `secret` under the
    gateway's 65-byte downlink key. ValueError when the key is not a point on P-256."""
    from anchor.p256_keys import affine
    from anchor.p256_verify import decode_point, mul

    x, y = decode_point(gateway_pub)
    z = affine(*mul(secret, x, y))
    if z is None:
        raise ValueError("the shared point is at infinity")
    return hkdf(z[0].to_bytes(32, "big"), dev_id.encode())


def read_json(path):
    """The JSON object in path (or its .tmp copy, see state.py), None when there is none."""
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
            raise Error("%s is damaged; remove it (the device then starts from what the "
                        "gateway sends next)" % p)
        return v
    return None


def gateway_key(d):
    """(the gateway's downlink public key, 65 bytes; the whole of DIR/gateway.json); Error when
    it is missing or damaged."""
    g = read_json(d + "/" + GATEWAY_FILE)
    if g is None:
        raise Error("no gateway downlink key in %s/%s: the device cannot check acks and "
                    "commands; run 'main.py trust --dir %s --downlink-key HEX' with the key "
                    "'iot-anchor downlink key' prints (or provision the board again)"
                    % (d, GATEWAY_FILE, d))
    try:
        pub = unhexlify(g["downlink"])
        if len(pub) != 65:
            raise ValueError
    except (KeyError, ValueError, TypeError):
        raise Error("%s/%s is damaged: 'downlink' is not a 130-hex-digit key" % (d, GATEWAY_FILE))
    return pub, g


def _for(dev):
    from hashlib import sha256

    return "".join("%02x" % b for b in sha256(dev.public_key).digest()[:8])


def agree(dev, pub):
    """Device dev's MAC key under the gateway key pub: the secret read again from
    DIR/key.json (Device keeps it private; this runs once per pair of keys)."""
    from anchor.p256_keys import secret_from_bytes
    from anchor.state import KEY_FILE

    with open(dev.dir + "/" + KEY_FILE) as f:
        secret = secret_from_bytes(unhexlify(json.loads(f.read())["secret"]))
    return derive_key(secret, dev.dev_id, pub)


def _write(dev, pub, key):
    from anchor.state import write_atomic

    h = "".join("%02x" % b for b in pub)
    write_atomic(dev.dir + "/" + GATEWAY_FILE, json.dumps({
        "v": 1, "downlink": h, "mac": "".join("%02x" % b for b in key),
        "for": _for(dev)}).encode())


def trust(dev, hex_key):
    """Write DIR/gateway.json of device dev (a state.Device) for the gateway downlink key
    hex_key (130 hex digits), with the MAC key derived from it (ECDH)."""
    try:
        if len(hex_key) != 130:
            raise ValueError("must be 130 hex digits")
        pub = unhexlify(hex_key)
        key = agree(dev, pub)   # ValueError when it is not a point on P-256
    except ValueError as e:
        raise Error("--downlink-key %s: %s (give the key 'iot-anchor downlink key' prints)"
                    % (hex_key[:16] + "...", e))
    _write(dev, pub, key)


def rederive(dev):
    """The MAC key of device dev from the gateway key in DIR/gateway.json, derived now and
    written back to the file (device_setup.downlink_state, when the file has none for this device
    key). Error when the gateway key is missing or unusable."""
    pub, _ = gateway_key(dev.dir)
    try:
        key = agree(dev, pub)
    except ValueError as e:
        raise Error("%s/%s: %s" % (dev.dir, GATEWAY_FILE, e))
    _write(dev, pub, key)
    return key
