# Loading a device's state from its directory (start-up), and the rule for device ids: run once,
# so a cold companion of state.py (state.COLD) that the device loop drops after start-up;
# state.Device.load calls it. Creating a device (keygen) is state_create.py. state.py describes
# the files and their format.

from binascii import unhexlify

try:
    import json
except ImportError:
    import ujson as json

from micropython import const

from anchor import Error
from anchor.p256_keys import public_key, secret_from_bytes
from anchor.state import KEY_FILE, LAST_FILE, SEQ_FILE, _path

_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
MAX_ID_LEN = const(64)


def check_id(dev_id):
    """Raise Error unless dev_id is 1..64 characters of A-Z a-z 0-9 . _ - (MQTT topic safe)."""
    if not isinstance(dev_id, str) or not 0 < len(dev_id) <= MAX_ID_LEN:
        raise Error("device id must be 1 to %d characters" % MAX_ID_LEN)
    for c in dev_id:
        if c not in _ID_CHARS:
            raise Error("device id %r: use only letters, digits, '.', '_' and '-'" % dev_id)


def _read(path):
    """File contents, or None if it does not exist (the .tmp copy counts, see state.py)."""
    for p in (path, path + ".tmp"):
        try:
            with open(p, "rb") as f:
                return f.read()
        except OSError:
            pass
    return None


def load(cls, d):
    """The device state in directory d. Error if there is no key or a file is damaged."""
    raw = _read(_path(d, KEY_FILE))
    if raw is None:
        raise Error("no device key in %s; run 'keygen --dir %s' first" % (d, d))
    try:
        key = json.loads(raw)
        dev_id = key["id"]
        s = secret_from_bytes(unhexlify(key["secret"]))
        pub = unhexlify(key["public"])
    except (ValueError, KeyError, TypeError) as e:
        raise Error("%s is damaged (%s)" % (_path(d, KEY_FILE), e))
    check_id(dev_id)
    if public_key(s) != pub:
        raise Error("%s is damaged: public key does not match the secret" %
                    _path(d, KEY_FILE))
    reserved = 0
    raw = _read(_path(d, SEQ_FILE))
    if raw is not None:
        try:
            reserved = int(json.loads(raw)["reserved_upto"])
        except (ValueError, KeyError, TypeError):
            raise Error("%s is damaged" % _path(d, SEQ_FILE))
    last = _read(_path(d, LAST_FILE))
    seq = reserved
    if last is not None:
        from anchor.cbor_decode import decode  # here: keygen imports this module, never decodes

        try:
            m = decode(last).value  # 18([protected, {}, payload, signature])
            payload = decode(m[2])
            last_seq = payload["seq"]
            if len(m) != 4 or payload["dev"] != dev_id or not isinstance(last_seq, int):
                raise ValueError("not this device's message")
            seq = last_seq + 1
        except (Error, ValueError, KeyError, TypeError, IndexError, AttributeError):
            last = None  # see the note at the top: fall back to the reservation
    return cls(d, dev_id, s, pub, seq, reserved, last)
