# The outbox: signed readings on flash until the gateway acknowledges them as anchored.
#
# Layout under DIR/outbox/:
#   00000001.seg, 00000002.seg, ...  append-only segments of reading records (seq order)
#   acks.log                         append-only log of acks and drops; rewritten (tmp + rename)
#                                    when it grows past LOG_COMPACT (2 KB)
#
# A record, in both kinds of file, is a 12-byte header and a payload:
#   magic 0xA7 (u8) | kind (u8) | payload length (u16 LE) | seq (u32 LE) | CRC-32 (u32 LE)
# where the CRC-32 (binascii.crc32) covers the first 8 header bytes and the payload. Kinds:
#   READING  seq = the reading's seq, payload = the whole COSE message
#   ACK      seq = upto + 1 (so upto = -1 is 0), payload = the other acked seqs (u32 LE each)
#   DROP     seq = 0, payload = the seqs dropped by the size bound (u32 LE each)
#   BASE     seq = upto + 1, payload = dropped total (u32) then the done seqs above upto
#             (first record of a compacted acks.log)
#
# Power loss: a record is written with one write() call and a segment or the log is never
# rewritten in place. On load, the first record that is short or fails its CRC ends that file
# (a torn last write is dropped, never a crash); appends after a reboot always start a new
# segment, so a torn tail is never followed by good records. A reading stays until an ack (or
# the size bound) marks it done; a segment whose records are all done is deleted (the one being
# appended to only once it is full, so a quiet device does not create and delete a file per
# reading). An ack is made durable in acks.log before any segment is deleted, so a crash in
# between only delays deletion. An ack never reaches past the highest seq appended (clamped),
# so a wrong ack cannot mark future readings done. The log is compacted by writing acks.tmp and
# renaming it over acks.log; load() finishes or discards an interrupted compaction.
#
# Size bound (documented policy): at most `max_records` readings wait in the outbox. Appending
# one more drops the oldest waiting reading first, and counts it in `dropped` (persisted). The
# number of segment files is bounded too (max_records / seg_records + 2): when a new segment
# would exceed it, the oldest segment's waiting readings are dropped and counted the same way.
# Dropping never raises; the device keeps producing.
#
# Cold companions (COLD): an Outbox is made by outbox_load.load_outbox(root, ...), which checks
# the sizes and reads it from flash (start-up; the device loop drops that module once it has
# started); the rare paths (dropping readings, compacting acks.log) are outbox_trim.py, loaded
# for the call only (Outbox._trim).
#
# RAM: 11 bytes per record slot of each live segment (seq u32, offset u16, last publish ticks
# with a published-again flag i32, state u8; arrays preallocated per segment), plus one small
# object per segment: measured 21 bytes per waiting record with 400 waiting on the Unix port
# (test_index_memory_per_record).
# Records stay on flash and are read back one at a time for (re)publishing.

import binascii
import os
import struct
from array import array

from micropython import const

from anchor import unload

COLD = ("outbox_load", "outbox_trim")

# The record format and the states of a record slot. Public (no underscore) so that the cold
# companions read them from here; each still compiles to its value in this module.
MAGIC = const(0xA7)
READING = const(1)
ACK = const(2)
DROP = const(3)
BASE = const(4)
HDR = const(12)
LOG_COMPACT = const(2048)
_NEVER = const(-1)  # "never published" in the sent-ticks array
# A sent-ticks item: the low 29 bits of ticks_ms, and _AGAIN; < 2**30, so a small int on every
# port (reading a larger one from the array would allocate an int object each time)
_AGAIN = const(0x20000000)  # published more than once
_TICKS = const(0x1FFFFFFF)

PENDING = const(0)
DONE = const(1)
_FREE = const(2)


def _crc(hdr8, payload):
    return binascii.crc32(payload, binascii.crc32(hdr8)) & 0xFFFFFFFF


def _record(kind, seq, payload):
    hdr = bytearray(HDR)
    struct.pack_into("<BBHI", hdr, 0, MAGIC, kind, len(payload), seq)
    struct.pack_into("<I", hdr, 8, _crc(memoryview(hdr)[:8], payload))
    return hdr + payload


def _u32s(seqs):
    b = bytearray(4 * len(seqs))
    for i, s in enumerate(seqs):
        struct.pack_into("<I", b, 4 * i, s)
    return b


class _Seg:
    # Arrays preallocated for `cap` records (no growth slack); unused slots have state _FREE.
    __slots__ = ("num", "path", "seqs", "offs", "sent", "st", "n", "pending", "size")

    def __init__(self, num, path, cap):
        # MicroPython builds an array from a buffer's raw bytes: cap zeroed items each
        self.num = num
        self.path = path
        self.seqs = array("I", bytearray(4 * cap))   # "I"/"i": 4 bytes on every port
        self.offs = array("H", bytearray(2 * cap))
        self.sent = array("i", bytearray(4 * cap))
        self.st = bytearray(b"\x02" * cap)
        self.n = 0
        self.pending = 0
        self.size = 0

    def add(self, seq, off, done):
        i = self.n
        if i < len(self.st):
            self.seqs[i] = seq
            self.offs[i] = off
            self.sent[i] = _NEVER
            self.st[i] = DONE if done else PENDING
        else:  # a segment written with a larger seg_records than now
            self.seqs.append(seq)
            self.offs.append(off)
            self.sent.append(_NEVER)
            self.st.append(DONE if done else PENDING)
        self.n = i + 1
        if not done:
            self.pending += 1


class Outbox:
    """The flash outbox in `root`/outbox. See the module comment for format and policy. Made by
    outbox_load.load_outbox(root, ...): no constructor here, its code is start-up code."""

    # Attributes (load_outbox sets every one):
    #   settings   dir (root/outbox), max_records, seg_records, seg_bytes, max_segs
    #              (max_records // seg_records + 2): load_outbox's arguments
    #   state      segs: the _Seg of each segment file, oldest first; upto: every seq <= upto is
    #              done; pending: readings waiting; last_seq: the highest seq appended (after a
    #              reload: on flash, or upto if higher; -1: none); dropped: readings dropped,
    #              ever (persisted); corrupt: files whose tail a bad record cut at load;
    #              delay: the smoothed delay of the acks in ms (ack's `now`; -1 before the first)
    #   internal   for outbox_load and outbox_trim: cur (the segment appends go to, never one
    #              from before a reload, or None), log_size (bytes in acks.log), next_num (the
    #              next segment file's number); the methods path, log, mark and sweep

    # -- load -----------------------------------------------------------------------------

    def path(self, num):
        """The path of segment file `num`."""
        return "%s/%08d.seg" % (self.dir, num)

    # -- append ---------------------------------------------------------------------------

    def append(self, seq, msg):
        """Store one signed reading. Requires seq > every seq appended before."""
        if len(msg) > 65535 - HDR:
            raise ValueError("reading of %d bytes is too large for the outbox" % len(msg))
        while self.pending >= self.max_records:
            self._trim("drop_oldest")
        cur = self.cur
        if cur is None or cur.n >= self.seg_records or \
                cur.size + HDR + len(msg) > self.seg_bytes:
            while len(self.segs) >= self.max_segs:
                self._trim("drop_segment", self.segs[0])
            cur = self.cur = _Seg(self.next_num, self.path(self.next_num), self.seg_records)
            self.next_num += 1
            self.segs.append(cur)
        rec = _record(READING, seq, msg)
        with open(cur.path, "ab") as f:
            f.write(rec)
        cur.add(seq, cur.size, False)
        cur.size += len(rec)
        self.pending += 1
        self.last_seq = seq

    def drop(self, seg, i):
        """Give up on one waiting reading (its record cannot be read back): counted as dropped."""
        self._trim("drop", seg, i)

    def compact_log(self):
        """Rewrite acks.log as one record (done by itself when the log outgrows LOG_COMPACT)."""
        self._trim("compact_log")

    def _trim(self, name, *args):
        # The rare paths (the size bound, a damaged record, compacting the ack log) are in
        # outbox_trim.py, loaded for the call and dropped again. They run between two readings
        # (asyncio switches tasks only at an await), so they never add to the heap that signing
        # needs, which is the device loop's peak.
        from anchor import outbox_trim

        try:
            getattr(outbox_trim, name)(self, *args)
        finally:
            unload("outbox_trim")

    # -- acks -----------------------------------------------------------------------------

    def ack(self, upto, seqs=(), now=None):
        """Apply an ack: every seq <= upto and each of `seqs` is anchored. Returns how many
        waiting readings it removed. Durable (acks.log) before any segment is deleted.
        With `now` (ticks_ms on arrival), the delay from the publish of the newest reading it
        removes that was published only once (a copy's ack is ambiguous) goes into `delay`,
        smoothed as RFC 6298 smooths round trips (gain 1/8; the first sample as it is)."""
        # Never beyond what was appended: a wrong or hostile ack with a huge upto must not mark
        # future readings as done (on reload they would be skipped).
        if upto > self.last_seq:
            upto = self.last_seq
        if len(seqs) > 8:
            seqs = set(seqs)
        newly = 0
        for seg in self.segs:
            if not seg.pending:
                continue
            st = seg.st
            sq = seg.seqs
            for i in range(len(st)):
                if st[i] == PENDING and (sq[i] <= upto or sq[i] in seqs):
                    newly += 1
        if upto > self.upto or newly:
            extra = [s for s in seqs if upto < s <= self.last_seq]
            self.log(_record(ACK, max(upto, self.upto) + 1, _u32s(extra)))
            if upto > self.upto:
                self.upto = upto
            top = -1
            for seg in self.segs:
                if not seg.pending:
                    continue
                st = seg.st
                sq = seg.seqs
                sent = seg.sent
                for i in range(len(st)):
                    if st[i] == PENDING and (sq[i] <= upto or sq[i] in seqs):
                        self.mark(seg, i)
                        t = sent[i]
                        if t >= 0 and not t & _AGAIN and sq[i] > top:
                            top = sq[i]
                            at = t
            if now is not None and top >= 0:
                at = (now - at) & _TICKS
                d = self.delay
                self.delay = at if d < 0 else d + (at - d) // 8
            self.sweep()
        return newly

    def mark(self, seg, i):
        """Record i of seg is done. Requires it waiting, and its ack or drop in acks.log."""
        seg.st[i] = DONE
        seg.pending -= 1
        self.pending -= 1

    def sweep(self):
        """Delete segments with nothing waiting (the one being appended to only once it is
        full, so a quiet device does not create and delete a file per reading); compact the
        log when it is long."""
        keep = []
        for seg in self.segs:
            if seg.pending == 0 and (seg is not self.cur or seg.n >= self.seg_records):
                try:
                    os.remove(seg.path)
                except OSError:
                    pass
                if seg is self.cur:
                    self.cur = None
            else:
                keep.append(seg)
        self.segs = keep
        if self.log_size > LOG_COMPACT:
            self.compact_log()

    def log(self, rec):
        """Append record `rec` (built by _record) to acks.log."""
        with open(self.dir + "/acks.log", "ab") as f:
            f.write(rec)
        self.log_size += len(rec)

    # -- reading back ---------------------------------------------------------------------

    def waiting(self):
        """Yield (seg, i, seq) for every waiting reading, oldest first. Safe while acks arrive:
        check `is_waiting(seg, i)` after each await."""
        for seg in list(self.segs):
            for i in range(len(seg.st)):
                if seg.st[i] == PENDING:
                    yield seg, i, seg.seqs[i]

    def is_waiting(self, seg, i):
        return seg.st[i] == PENDING and seg in self.segs

    def read(self, seg, i):
        """The COSE message of record i of seg (checked against its CRC). OSError if gone."""
        with open(seg.path, "rb") as f:
            f.seek(seg.offs[i])
            hdr = f.read(HDR)
            magic, kind, n, seq, crc = struct.unpack("<BBHII", hdr)
            payload = f.read(n)
        if magic != MAGIC or seq != seg.seqs[i] or _crc(memoryview(hdr)[:8], payload) != crc:
            raise OSError(5)  # EIO: the flash changed under us
        return payload

    def sent_age(self, seg, i, now):
        """ms from the last publish of record i of seg to ticks_ms `now`, or None when never
        published since load. Counted modulo 2**29 ms (6.2 days), whatever the port's ticks
        period (2**30 on a board, 2**62 on the 64-bit Unix port)."""
        t = seg.sent[i]
        return None if t == _NEVER else (now - t) & _TICKS

    def mark_sent(self, seg, i, ticks, again=False):
        """Record i of seg was published at ticks_ms `ticks`; `again`: not for the first
        time."""
        seg.sent[i] = ticks & _TICKS | (_AGAIN if again else 0)

    def clear_sent(self):
        """Forget publish times (after a reconnect everything is due again)."""
        for seg in self.segs:
            s = seg.sent
            for i in range(len(s)):
                s[i] = _NEVER
