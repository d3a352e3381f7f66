# Loading the outbox from flash: run once when an Outbox is made (start-up), so it is kept out of
# outbox.py and dropped from RAM by the device loop afterwards. outbox.py describes the format.
# Also the outbox's rare paths (the size bound, a damaged record, compacting acks.log): Outbox
# loads this module for one of them and drops it again (Outbox._rare).

import os
import struct

from micropython import const

from anchor.outbox import _Seg, _crc, _record, _u32s

# outbox.py's record format (its constants are inlined there, so not importable)
_MAGIC = const(0xA7)
_READING = const(1)
_ACK = const(2)
_DROP = const(3)
_BASE = const(4)
_HDR = const(12)
_LOG_COMPACT = const(2048)
_PENDING = const(0)
_DONE = const(1)


def _records(path):
    """Yield (kind, seq, payload, offset) for each good record; stop at the first bad one."""
    try:
        f = open(path, "rb")
    except OSError:
        return
    try:
        off = 0
        while True:
            hdr = f.read(_HDR)
            if len(hdr) < _HDR:
                return
            magic, kind, n, seq, crc = struct.unpack("<BBHII", hdr)
            if magic != _MAGIC:
                return
            payload = f.read(n)
            if len(payload) < n or _crc(memoryview(hdr)[:8], payload) != crc:
                return
            yield kind, seq, payload, off
            off += _HDR + n
    finally:
        f.close()


def init(self, root, max_records, seg_records, seg_bytes):
    """Outbox.__init__: the sizes checked, the attributes set, the outbox read from flash."""
    if max_records < 1 or seg_records < 1 or not 1024 <= seg_bytes <= 65535:
        raise ValueError("outbox sizes out of range: max_records >= 1, seg_records >= 1, "
                         "1024 <= seg_bytes <= 65535")
    self.dir = root.rstrip("/") + "/outbox"
    self.max_records = max_records
    self.seg_records = seg_records
    self.seg_bytes = seg_bytes
    self.max_segs = max_records // seg_records + 2
    self.segs = []          # _Seg, oldest first
    self._cur = None        # the segment appends go to (never one from before a reload)
    self.upto = -1          # every seq <= upto is done
    self.dropped = 0
    self.pending = 0
    self.last_seq = -1      # highest seq ever appended that is still on flash
    self.corrupt = 0        # files whose tail was cut by a bad record at load
    self._log_size = 0
    self._next_num = 1
    load(self)


def load(self):
    """Create the outbox directory if needed, then read the ack log and the segments into
    Outbox `self` (see outbox.py for the format and the recovery rules)."""
    _mkdirs(self.dir)
    log = self.dir + "/acks.log"
    tmp = self.dir + "/acks.tmp"
    if _exists(log):
        try:
            os.remove(tmp)          # an interrupted compaction: acks.log is intact
        except OSError:
            pass
    elif _exists(tmp):
        os.rename(tmp, log)         # interrupted between remove and rename (FAT)
    extra = set()
    good_end = 0
    for kind, seq, payload, off in _records(log):
        if kind == _ACK:
            self.upto = max(self.upto, seq - 1)
            for i in range(0, len(payload), 4):
                extra.add(struct.unpack_from("<I", payload, i)[0])
        elif kind == _DROP:
            for i in range(0, len(payload), 4):
                extra.add(struct.unpack_from("<I", payload, i)[0])
            self.dropped += len(payload) // 4
        elif kind == _BASE:
            self.upto = max(self.upto, seq - 1)
            self.dropped += struct.unpack_from("<I", payload, 0)[0]
            for i in range(4, len(payload), 4):
                extra.add(struct.unpack_from("<I", payload, i)[0])
        good_end = off + _HDR + len(payload)
    self._log_size = _size(log)
    torn_log = self._log_size != good_end
    if torn_log:
        self.corrupt += 1
    nums = []
    for name in os.listdir(self.dir):
        if name.endswith(".seg"):
            try:
                nums.append(int(name[:-4]))
            except ValueError:
                pass
    nums.sort()
    for num in nums:
        seg = _Seg(num, self._path(num), self.seg_records)
        end = 0
        for kind, seq, payload, off in _records(seg.path):
            if kind != _READING:
                continue
            seg.add(seq, off, seq <= self.upto or seq in extra)
            if seq > self.last_seq:
                self.last_seq = seq
            end = off + _HDR + len(payload)
        seg.size = end
        if _size(seg.path) != end:
            self.corrupt += 1
        self.pending += seg.pending
        self.segs.append(seg)
        self._next_num = num + 1
    extra = None
    if self.upto > self.last_seq:
        self.last_seq = self.upto
    self._cur = None
    self._sweep()
    if torn_log or self._log_size > _LOG_COMPACT:
        self._compact_log()     # later appends must not sit behind a torn record


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return 0


def _mkdirs(path):
    cur = "/" if path.startswith("/") else ""
    for part in path.split("/"):
        if not part:
            continue
        cur = cur + part if (not cur or cur.endswith("/")) else cur + "/" + part
        try:
            os.mkdir(cur)
        except OSError:
            pass


# ---- the rare paths: f(outbox, ...), called through Outbox._rare ----


def drop(ob, seg, i):
    """Give up on waiting reading i of seg: logged and counted as dropped."""
    if seg.st[i] == _PENDING:
        ob._log(_record(_DROP, 0, _u32s((seg.seqs[i],))))
        ob._mark(seg, i)
        ob.dropped += 1
        ob._sweep()


def drop_oldest(ob):
    """Drop the oldest waiting reading (the outbox is at its size bound)."""
    for seg in ob.segs:
        if seg.pending:
            st = seg.st
            for i in range(len(st)):
                if st[i] == _PENDING:
                    drop(ob, seg, i)
                    return
    raise RuntimeError("outbox: nothing to drop")  # unreachable while pending > 0


def drop_segment(ob, seg):
    """Drop every waiting reading of seg (too many segment files), then delete it."""
    lost = [seg.seqs[i] for i in range(len(seg.st)) if seg.st[i] == _PENDING]
    if lost:
        ob._log(_record(_DROP, 0, _u32s(lost)))
        ob.dropped += len(lost)
    for i in range(len(seg.st)):
        if seg.st[i] == _PENDING:
            ob._mark(seg, i)
    ob._sweep()


def compact_log(ob):
    """Rewrite acks.log as one _BASE record (upto, dropped total, the done seqs above upto):
    acks.tmp, then renamed over acks.log."""
    done = []
    for seg in ob.segs:
        for i in range(len(seg.st)):
            if seg.st[i] == _DONE and seg.seqs[i] > ob.upto:
                done.append(seg.seqs[i])
    payload = _u32s([ob.dropped] + done)
    rec = _record(_BASE, ob.upto + 1, payload)
    tmp = ob.dir + "/acks.tmp"
    with open(tmp, "wb") as f:
        f.write(rec)
    log = ob.dir + "/acks.log"
    try:
        os.rename(tmp, log)
    except OSError:             # FAT cannot rename over a file; load() handles a crash here
        os.remove(log)
        os.rename(tmp, log)
    ob._log_size = len(rec)
