# The outbox's rare paths: dropping waiting readings (the size bound, a record that cannot be read
# back) and compacting acks.log. A cold companion of outbox.py (outbox.COLD), loaded for one call
# and dropped again (Outbox._trim). Each is f(outbox, ...); outbox.py describes the format.

import os

from anchor.outbox import BASE, DONE, DROP, PENDING, _record, _u32s


def drop(ob, seg, i):
    """Give up on waiting reading i of seg: logged and counted as dropped."""
    if seg.st[i] == PENDING:
        ob.log(_record(DROP, 0, _u32s((seg.seqs[i],))))
        ob.mark(seg, i)
        ob.dropped += 1
        ob.sweep()


def drop_oldest(ob):
    """Drop the oldest waiting reading (the outbox is at its size bound)."""
    for seg in ob.segs:
        if seg.pending:
            st = seg.st
            for i in range(len(st)):
                if st[i] == PENDING:
                    drop(ob, seg, i)
                    return
    raise RuntimeError("outbox: nothing to drop")  # unreachable while pending > 0


def drop_segment(ob, seg):
    """Drop every waiting reading of seg (too many segment files), then delete it."""
    lost = [seg.seqs[i] for i in range(len(seg.st)) if seg.st[i] == PENDING]
    if lost:
        ob.log(_record(DROP, 0, _u32s(lost)))
        ob.dropped += len(lost)
    for i in range(len(seg.st)):
        if seg.st[i] == PENDING:
            ob.mark(seg, i)
    ob.sweep()


def compact_log(ob):
    """Rewrite acks.log as one BASE record (upto, dropped total, the done seqs above upto):
    acks.tmp, then renamed over acks.log."""
    done = []
    for seg in ob.segs:
        for i in range(len(seg.st)):
            if seg.st[i] == DONE and seg.seqs[i] > ob.upto:
                done.append(seg.seqs[i])
    payload = _u32s([ob.dropped] + done)
    rec = _record(BASE, ob.upto + 1, payload)
    tmp = ob.dir + "/acks.tmp"
    with open(tmp, "wb") as f:
        f.write(rec)
    log = ob.dir + "/acks.log"
    try:
        os.rename(tmp, log)
    except OSError:             # FAT cannot rename over a file; load() handles a crash here
        os.remove(log)
        os.rename(tmp, log)
    ob.log_size = len(rec)
