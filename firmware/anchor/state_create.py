# Creating a device's state in a directory (keygen, a board's first boot): run once, so a cold
# companion of state.py (state.COLD); state.Device.create calls it. state.py describes the files
# and their format.

import os
import sys
from binascii import hexlify, unhexlify
from hashlib import sha256

try:
    import json
except ImportError:
    import ujson as json

from anchor import Error
from anchor.p256_keys import generate_secret, public_key, secret_from_bytes
from anchor.state import KEY_FILE, LAST_FILE, SEQ_FILE, _path, write_atomic
from anchor.state_load import check_id


def default_id(public_key):
    """<platform>-<first 10 hex digits of SHA-256(public key)>, e.g. linux-3fa2b09c1d."""
    return "%s-%s" % (sys.platform, hexlify(sha256(public_key).digest()).decode()[:10])


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
        from anchor.error_text import errno_name

        raise Error("cannot create directory %s (%s)" % (d, errno_name(e)))


def create(cls, d, dev_id=None, secret=None, first_seq=0):
    """New device state in directory d (created if missing).

    secret: None for a new key from os.urandom, else 32 bytes or 64 hex characters.
    dev_id: None for default_id(public key). Refuses a directory that already holds state.
    first_seq: the seq of the first reading (reserved_upto starts there): a new key for a device
    id that has signed before continues its seqs, so that no seq is used twice under one id.
    """
    if secret is None:
        s = generate_secret()
    else:
        if isinstance(secret, str):
            if len(secret) != 64:
                raise Error("--secret must be 64 hex characters (32 bytes)")
            try:
                secret = unhexlify(secret)
            except ValueError:
                raise Error("--secret must be 64 hex characters (32 bytes)")
        try:
            s = secret_from_bytes(secret)
        except ValueError as e:
            raise Error("bad secret: %s" % e)
    pub = public_key(s)
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
    write_atomic(_path(d, SEQ_FILE),
                 json.dumps({"v": 1, "reserved_upto": first_seq}).encode())
    write_atomic(_path(d, KEY_FILE), json.dumps(key).encode())
    return cls(d, dev_id, s, pub, first_seq, first_seq, None)


def remove(d):
    """Delete the device state in directory d (each file and its .tmp copy; missing ones are
    fine), so that create() can make a new one there. The private key is gone afterwards."""
    for name in (KEY_FILE, SEQ_FILE, LAST_FILE):
        for p in (_path(d, name), _path(d, name + ".tmp")):
            try:
                os.remove(p)
            except OSError:
                pass
