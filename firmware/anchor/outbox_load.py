# Making an Outbox: its sizes checked, its state read from flash (start-up). A cold companion of
# outbox.py (outbox.COLD), which describes the format: the device loop drops it once it has
# started.

import os
import struct

from anchor.outbox import ACK, BASE, DROP, HDR, LOG_COMPACT, MAGIC, READING, Outbox, _crc, _Seg


def _records(path):
    """Yield (kind, seq, payload, offset) for each good record; stop at the first bad one."""
    try:
        f = open(path, "rb")
    except OSError:
        return
    try:
        off = 0
        while True:
            hdr = f.read(HDR)
            if len(hdr) < HDR:
                return
            magic, kind, n, seq, crc = struct.unpack("<BBHII", hdr)
            if magic != MAGIC:
                return
            payload = f.read(n)
            if len(payload) < n or _crc(memoryview(hdr)[:8], payload) != crc:
                return
            yield kind, seq, payload, off
            off += HDR + n
    finally:
        f.close()


def load_outbox(root, max_records=1000, seg_records=64, seg_bytes=16384):
    """The outbox in root/outbox, read from flash (the directory created if missing): at most
    max_records readings waiting, seg_records readings or seg_bytes bytes a segment file.
    ValueError when a size is out of range."""
    if max_records < 1 or seg_records < 1 or not 1024 <= seg_bytes <= 65535:
        raise ValueError("outbox sizes out of range: max_records >= 1, seg_records >= 1, "
                         "1024 <= seg_bytes <= 65535")
    ob = Outbox()           # outbox.Outbox lists these attributes
    ob.dir = root.rstrip("/") + "/outbox"
    ob.max_records = max_records
    ob.seg_records = seg_records
    ob.seg_bytes = seg_bytes
    ob.max_segs = max_records // seg_records + 2
    ob.segs = []
    ob.cur = None
    ob.upto = -1
    ob.dropped = 0
    ob.pending = 0
    ob.last_seq = -1
    ob.corrupt = 0
    ob.log_size = 0
    ob.next_num = 1
    ob.delay = -1
    _load(ob)
    return ob


def _load(ob):
    """Create the outbox directory if needed, then read the ack log and the segments into
    Outbox ob (see outbox.py for the format and the recovery rules)."""
    _mkdirs(ob.dir)
    log = ob.dir + "/acks.log"
    tmp = ob.dir + "/acks.tmp"
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
        if kind == ACK:
            ob.upto = max(ob.upto, seq - 1)
            for i in range(0, len(payload), 4):
                extra.add(struct.unpack_from("<I", payload, i)[0])
        elif kind == DROP:
            for i in range(0, len(payload), 4):
                extra.add(struct.unpack_from("<I", payload, i)[0])
            ob.dropped += len(payload) // 4
        elif kind == BASE:
            ob.upto = max(ob.upto, seq - 1)
            ob.dropped += struct.unpack_from("<I", payload, 0)[0]
            for i in range(4, len(payload), 4):
                extra.add(struct.unpack_from("<I", payload, i)[0])
        good_end = off + HDR + len(payload)
    ob.log_size = _size(log)
    torn_log = ob.log_size != good_end
    if torn_log:
        ob.corrupt += 1
    nums = []
    for name in os.listdir(ob.dir):
        if name.endswith(".seg"):
            try:
                nums.append(int(name[:-4]))
            except ValueError:
                pass
    nums.sort()
    for num in nums:
        seg = _Seg(num, ob.path(num), ob.seg_records)
        end = 0
        for kind, seq, payload, off in _records(seg.path):
            if kind != READING:
                continue
            seg.add(seq, off, seq <= ob.upto or seq in extra)
            if seq > ob.last_seq:
                ob.last_seq = seq
            end = off + HDR + len(payload)
        seg.size = end
        if _size(seg.path) != end:
            ob.corrupt += 1
        ob.pending += seg.pending
        ob.segs.append(seg)
        ob.next_num = num + 1
    extra = None
    if ob.upto > ob.last_seq:
        ob.last_seq = ob.upto
    ob.cur = None
    ob.sweep()
    if torn_log or ob.log_size > LOG_COMPACT:
        ob.compact_log()      # later appends must not sit behind a torn record


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
