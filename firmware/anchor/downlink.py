# The authenticated downlink on the device: every ack (anchor/<id>/ack) and every command
# (anchor/<id>/cmd) from the gateway is a COSE_Mac0 message (RFC 9052 section 6.2, HMAC
# 256/256) under the device's downlink key, and its payload carries a counter for freshness.
# docs/protocol.md ("The downlink") is the specification.
#
#   Guard.open(topic, msg) -> payload bytes   the MAC checked; ValueError("malformed" | "forged")
#   Guard.fresh(ctr)                           the replay window; ValueError("replayed" | "stale")
#   Guard.refuse(reason)                       counts a refusal (Guard.refused: reason -> n)
#
# The key: K = HKDF-SHA-256 over the ECDH secret of the device key and the gateway's downlink
# key, computed once at start-up (downlink_setup.make_guard), so a message costs two SHA-256
# passes over it here, not an ECDSA verification. The replay window: the highest counter
# accepted (top) and a bitmap of the WINDOW counters below it; a counter above top is new, one
# inside the window is new unless its bit is set (then "replayed"), one below it is "stale".
# Only a message whose MAC holds moves the window, so forgeries cannot push it.
#
# Cold companions (COLD): downlink_setup.py (the key, the saved window and counts, at
# start-up), downlink_cmd.py (running a command, its signed confirmation, saving the state).

import time

try:
    import json
except ImportError:
    import ujson as json

from micropython import const

from anchor.p256 import hmac_sha256
from anchor.state import write_atomic

COLD = ("downlink_setup", "downlink_cmd")
WINDOW = const(30)  # bits of the replay bitmap: a small int on a 32-bit board
MASK = const(0x3FFFFFFF)
STATE_FILE = "downlink.json"
_SAVE_EVERY = const(64)       # accepted messages between saves of the window
_SAVE_REFUSED_MS = const(5000)  # refusal counts are saved at most this often (flash wear)
# 17([protected = h'a10105' ({1: 5}, alg HMAC 256/256), unprotected = {}, payload, tag])
_HEAD = b"\xd1\x84\x43\xa1\x01\x05\xa0"
# MAC_structure = ["MAC0", protected, external_aad, payload]: its first two items
_MAC0 = b"\x84\x64MAC0\x43\xa1\x01\x05"


class Guard:
    """The downlink state of a running device. Made by downlink_setup.make_guard."""

    # Attributes (make_guard sets every one):
    #   key      the 32-byte MAC key (HKDF over the ECDH secret)
    #   top      the highest counter accepted, -1 before the first
    #   seen     bit i set: counter top - i was accepted (bit 0 is top itself)
    #   dir      the device's state directory
    #   unsaved  messages accepted since the last save; saved_at: ticks_ms of the last save
    #   cmd      the id of the last command run (-1: none); last: what it was and what came of
    #            it ({"id", "op", "args", "ok"}), or None
    #   refused  reason -> refusals since the device state was made ("malformed", "forged",
    #            "replayed", "stale"); dirty: counts changed since the last save

    def open(self, topic, msg):
        """The payload bytes of a sealed message received on topic (bytes, its external AAD),
        once its tag is checked. Raises ValueError("malformed") when msg is not a COSE_Mac0
        of this layout, ValueError("forged") when the tag does not match."""
        n = len(msg)
        if n < 42 or msg[:7] != _HEAD or msg[n - 34:n - 32] != b"\x58\x20":
            raise ValueError("malformed")
        a = msg[7]
        i = 8
        if a >> 5 != 2:
            raise ValueError("malformed")
        a &= 31
        if a == 24:
            a = msg[8]
            i = 9
        elif a == 25:
            a = msg[8] << 8 | msg[9]
            i = 10
        elif a > 23:
            raise ValueError("malformed")
        if i + a != n - 34:
            raise ValueError("malformed")
        t = len(topic)      # < 256: an id is at most 64 characters
        mv = memoryview(msg)
        tag = hmac_sha256(self.key, _MAC0, bytes((0x40 | t,)) if t < 24 else bytes((0x58, t)),
                          topic, mv[7:n - 34])
        d = 0
        for k in range(32):   # no early exit: the time does not tell how much of it matched
            d |= tag[k] ^ msg[n - 32 + k]
        if d:
            raise ValueError("forged")
        return bytes(mv[i:n - 34])

    def fresh(self, c):
        """Accept counter c (an int) or raise ValueError("replayed" | "stale")."""
        t = self.top
        if c > t:
            s = c - t
            self.seen = ((self.seen & (MASK >> s)) << s | 1) if s < WINDOW else 1
            self.top = c
            return
        d = t - c
        if d >= WINDOW:
            raise ValueError("stale")
        if self.seen >> d & 1:
            raise ValueError("replayed")
        self.seen |= 1 << d

    def accepted(self):
        """After a message was accepted: save the window every _SAVE_EVERY messages."""
        self.unsaved += 1
        if self.unsaved >= _SAVE_EVERY:
            self.save()

    def refuse(self, reason):
        """Count a refusal; saved at once unless the last save is under 5 s old (a flood of
        forgeries must not wear out the flash), else with the next save."""
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self.dirty = True
        if time.ticks_diff(time.ticks_ms(), self.saved_at) >= _SAVE_REFUSED_MS:
            self.save()

    def save(self):
        """Write DIR/downlink.json (atomically): top, the last command, the refusal counts.
        After a restart, counters up to this top are refused."""
        write_atomic(self.dir + "/" + STATE_FILE, json.dumps({
            "v": 1, "top": self.top, "cmd": self.cmd, "last": self.last,
            "refused": self.refused}).encode())
        self.unsaved = 0
        self.dirty = False
        self.saved_at = time.ticks_ms()
