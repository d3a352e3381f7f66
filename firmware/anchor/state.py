# The device's durable state in one directory: its key, its seq reservation, its last message.
# docs/protocol.md ("Device state") describes the files; in short:
#
#   key.json   {"v": 1, "id": DEVICE_ID, "secret": 64 hex, "public": 130 hex}   written once
#   seq.json   {"v": 1, "reserved_upto": N}   seqs below N may have been used; rewritten once
#              per _SEQ_BLOCK readings, before the first seq of the new block is used
#   last.cose  the last complete COSE message the device handed out; prev = SHA-256 of it
#
# Every write is atomic: write NAME.tmp, then rename it over NAME (on FAT, where rename cannot
# replace a file, remove NAME first; a NAME.tmp found without NAME is then the newest copy).
#
# API for the device loop:
#   dev = Device.load(dir)        or Device.create(dir, dev_id=None, secret=None, first_seq=0)
#   dev.dev_id, dev.public_key (65 bytes), dev.seq (the next seq), dev.prev (32 bytes),
#   dev.last_message (bytes or None), dev.reserved_upto (seqs below it may have been used)
#   msg = dev.next_reading({"temp": 21.5}, ts=unix_time())   -> the whole COSE message
# and for the cold companions and provisioning: write_atomic(path, data), and
# state_create.remove(dir) (the state's files, before a new key replaces the old one).
#
# Durability and power loss. next_reading() signs, then commits last.cose, and only then
# returns the message; nothing it returns can be lost from the chain's point of view:
#   - power lost before the commit: the message never left the device. After reboot the next
#     reading reuses that seq (no gap) with the old prev; nobody ever saw the lost one.
#   - power lost after the commit but before the caller stored or published the message: the
#     message is still in last.cose (dev.last_message), so the loop can queue it again; the
#     gateway treats a second copy as a duplicate.
#   - last.cose lost or unreadable (a damaged file system): the next seq falls back to
#     reserved_upto, which is always above every seq ever used, so no seq is reused; prev starts
#     again from 32 zero bytes and the gateway records a chain break, which is the truth.
# Loading the state (start-up) is state_load.py, creating a device (keygen) state_create.py: cold
# companions (COLD), imported by Device.load and Device.create when called.
#
# Flash cost per reading: one small file rewrite (last.cose, about 200 bytes) plus, every 64
# readings, seq.json.

import os
import sys
import time

try:
    import json
except ImportError:
    import ujson as json

from hashlib import sha256

from micropython import const

from anchor import Error

_SEQ_BLOCK = const(64)
_EPOCH_2000 = const(946684800)  # 2000-01-01T00:00:00Z in unix seconds
# A clock that reads earlier than 2024-01-01 has not been set (boards start at 2000 or 1970).
_CLOCK_VALID_AFTER = const(1704067200)

KEY_FILE = "key.json"
SEQ_FILE = "seq.json"
LAST_FILE = "last.cose"
COLD = ("state_load", "state_create", "error_text")

try:
    _EPOCH_OFFSET = _EPOCH_2000 if time.gmtime(0)[0] == 2000 else 0
except (AttributeError, OverflowError):
    _EPOCH_OFFSET = _EPOCH_2000 if sys.platform == "esp32" else 0


def unix_time():
    """The device clock as int unix seconds, or None while the clock is unset.

    time.time() counts from 2000 on ports whose epoch is 2000 (ESP32): converted here.
    """
    t = int(time.time()) + _EPOCH_OFFSET
    return t if t >= _CLOCK_VALID_AFTER else None


def _path(d, name):
    return d + "/" + name if d else name


def write_atomic(path, data):
    """Replace the file at path by data, atomically (see the top of this module). Error if the
    file system refuses."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.rename(tmp, path)
        except OSError:
            # FAT cannot rename over an existing file.
            try:
                os.remove(path)
            except OSError:
                pass
            os.rename(tmp, path)
    except OSError as e:
        from anchor import error_text  # the message: error path only

        raise Error(error_text.write(path, e))


class Device:
    @classmethod
    def create(cls, d, dev_id=None, secret=None, first_seq=0):
        """New device state in directory d (created if missing), whose first reading has seq
        first_seq; see state_create.create."""
        from anchor.state_create import create

        return create(cls, d, dev_id, secret, first_seq)

    @classmethod
    def load(cls, d):
        """The device state in directory d. Error if there is no key or a file is damaged
        (state_load.load: run once at start-up, so not kept in RAM)."""
        from anchor.state_load import load

        return load(cls, d)

    def __init__(self, d, dev_id, secret, public_key, seq, reserved_upto, last):
        self.dir = d
        self.dev_id = dev_id
        self._secret = secret
        self._kid = dev_id.encode()
        self.public_key = public_key
        self.seq = seq
        self.reserved_upto = reserved_upto
        self.last_message = last
        self.prev = sha256(last).digest() if last else bytes(32)  # cose.message_hash

    def sign1(self, payload):
        """A COSE_Sign1 message over payload (bytes) with the device key, its protected header
        the same as a reading's (a command's confirmation)."""
        from anchor import cose

        return cose.sign1(self._secret, self._kid, payload)

    def next_reading(self, data, ts=None):
        """Sign the next reading and return the whole COSE message (bytes).

        data: dict sensor name -> int|float. ts: int unix seconds, or None to leave it out.
        The message is committed (last.cose) before it is returned; seq and prev advance.
        """
        from anchor import cose  # here, not at the top: see cli.py ("Memory")

        seq = self.seq
        # Encoding and signing have no side effects: bad input (data, ts) fails here and costs
        # nothing; cose.reading says what is wrong.
        payload = cose.reading(self.dev_id, seq, self.prev, data, ts)
        msg = cose.sign1(self._secret, self._kid, payload)
        if len(msg) > cose.MAX_MESSAGE:
            from anchor import error_text  # the message: error path only

            raise Error(error_text.reading_size(len(msg)))
        if seq >= self.reserved_upto:
            upto = seq + _SEQ_BLOCK
            write_atomic(_path(self.dir, SEQ_FILE),
                         json.dumps({"v": 1, "reserved_upto": upto}).encode())
            self.reserved_upto = upto
        write_atomic(_path(self.dir, LAST_FILE), msg)
        self.last_message = msg
        self.prev = sha256(msg).digest()
        self.seq = seq + 1
        return msg

