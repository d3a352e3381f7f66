# Creating a device's state (keygen) and loading it (start-up): run once, so not kept in RAM
# with state.py (state.Device.create and Device.load forward here; the device loop drops this
# module after start-up). See state.py for the files and their format.

import os
import sys
from binascii import hexlify, unhexlify

try:
    import json
except ImportError:
    import ujson as json

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


from anchor import Error, cbor, cose, p256
from anchor.state import KEY_FILE, LAST_FILE, SEQ_FILE, _path, _write_atomic

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


def default_id(public_key):
    """<platform>-<first 10 hex digits of SHA-256(public key)>, e.g. linux-3fa2b09c1d."""
    return "%s-%s" % (sys.platform, hexlify(cose.message_hash(public_key)).decode()[:10])


_ERRNO = {
    2: "no such file or directory",
    13: "permission denied",
    17: "file exists",
    20: "not a directory",
    21: "is a directory",
    28: "no space left on device",
    30: "read-only file system",
}


def errno_name(e):
    code = e.args[0] if e.args else 0
    return _ERRNO.get(code, "errno %s" % code)


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def makedirs(d):
    try:
        if os.stat(d)[0] & 0x4000:
            return
        raise Error("%s exists and is not a directory" % d)
    except OSError:
        pass
    parent = d.rstrip("/").rsplit("/", 1)[0] if "/" in d.rstrip("/") else ""
    if parent:
        makedirs(parent)
    try:
        os.mkdir(d)
    except OSError as e:
        raise Error("cannot create directory %s (%s)" % (d, errno_name(e)))


def create(cls, d, dev_id=None, secret=None):
    """New device state in directory d (created if missing).

    secret: None for a new key from os.urandom, else 32 bytes or 64 hex characters.
    dev_id: None for default_id(public key). Refuses a directory that already holds state.
    """
    if secret is None:
        s = p256.generate_secret()
    else:
        if isinstance(secret, str):
            if len(secret) != 64:
                raise Error("--secret must be 64 hex characters (32 bytes)")
            try:
                secret = unhexlify(secret)
            except ValueError:
                raise Error("--secret must be 64 hex characters (32 bytes)")
        try:
            s = p256.secret_from_bytes(secret)
        except ValueError as e:
            raise Error("bad secret: %s" % e)
    pub = p256.public_key(s)
    if dev_id is None:
        dev_id = default_id(pub)
    check_id(dev_id)
    makedirs(d)
    for name in (KEY_FILE, SEQ_FILE, LAST_FILE):
        if exists(_path(d, name)) or exists(_path(d, name + ".tmp")):
            raise Error("%s already holds device state (%s); keep it, or use an empty "
                        "directory" % (d, name))
    key = {"v": 1, "id": dev_id, "secret": hexlify(s.to_bytes(32, "big")).decode(),
           "public": hexlify(pub).decode()}
    _write_atomic(_path(d, SEQ_FILE), json.dumps({"v": 1, "reserved_upto": 0}).encode())
    _write_atomic(_path(d, KEY_FILE), json.dumps(key).encode())
    return cls(d, dev_id, s, pub, 0, 0, None)


def load(cls, d):
    """The device state in directory d. Error if there is no key or a file is damaged."""
    raw = _read(_path(d, KEY_FILE))
    if raw is None:
        raise Error("no device key in %s; run 'keygen --dir %s' first" % (d, d))
    try:
        key = json.loads(raw)
        dev_id = key["id"]
        s = p256.secret_from_bytes(unhexlify(key["secret"]))
        pub = unhexlify(key["public"])
    except (ValueError, KeyError, TypeError) as e:
        raise Error("%s is damaged (%s)" % (_path(d, KEY_FILE), e))
    check_id(dev_id)
    if p256.public_key(s) != pub:
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
        try:
            m = cbor.decode(last).value  # 18([protected, {}, payload, signature])
            payload = cbor.decode(m[2])
            last_seq = payload["seq"]
            if len(m) != 4 or payload["dev"] != dev_id or not isinstance(last_seq, int):
                raise ValueError("not this device's message")
            seq = last_seq + 1
        except (Error, ValueError, KeyError, TypeError, IndexError, AttributeError):
            last = None  # see the note at the top: fall back to the reservation
    return cls(d, dev_id, s, pub, seq, reserved, last)
