# MicroPython tests of anchor/outbox.py (the flash outbox). Each test works in its own fresh
# directory under /tmp (or $TMPDIR). Run: micropython firmware/tests/test_outbox.py [name ...]

import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path.insert(0, _here + "/..")

import gc
import os

import runner

from anchor.outbox_load import load_outbox

_BASE = (os.getenv("TMPDIR") or "/tmp").rstrip("/") + "/outbox-test-%d" % (
    int.from_bytes(os.urandom(4), "big"))


_count = [0]


def fresh():
    _count[0] += 1
    d = "%s/%d" % (_BASE, _count[0])
    runner.rmtree(d)
    try:
        os.mkdir(_BASE)
    except OSError:
        pass
    os.mkdir(d)
    return d


def msg(seq):
    # a stand-in COSE message: distinct per seq, varying length
    return b"\xd2\x84" + (b"reading-%d-" % seq) * (1 + seq % 7)


def seqs_waiting(ob):
    return [s for _, _, s in ob.waiting()]


def segfiles(d):
    return sorted(n for n in os.listdir(d + "/outbox") if n.endswith(".seg"))


# ---------------------------------------------------------------------------------------------

def test_append_reload_read_back():
    d = fresh()
    ob = load_outbox(d)
    for s in range(10):
        ob.append(s, msg(s))
    assert ob.pending == 10
    ob2 = load_outbox(d)
    assert ob2.pending == 10 and ob2.last_seq == 9 and ob2.corrupt == 0
    got = [(s, ob2.read(seg, i)) for seg, i, s in ob2.waiting()]
    assert got == [(s, msg(s)) for s in range(10)]


def test_ack_upto_and_seqs_persist():
    d = fresh()
    ob = load_outbox(d)
    for s in range(10):
        ob.append(s, msg(s))
    assert ob.ack(-1, []) == 0
    assert ob.ack(3, [6, 8]) == 6
    assert seqs_waiting(ob) == [4, 5, 7, 9]
    assert ob.ack(3, [6]) == 0            # a repeated ack changes nothing
    ob = load_outbox(d)
    assert seqs_waiting(ob) == [4, 5, 7, 9] and ob.upto == 3
    assert ob.ack(5, []) == 2
    ob = load_outbox(d)
    assert seqs_waiting(ob) == [7, 9]


def test_ack_with_upto_minus_one_and_out_of_order_seqs():
    d = fresh()
    ob = load_outbox(d)
    for s in range(5):
        ob.append(s, msg(s))
    assert ob.ack(-1, [4, 2]) == 2        # seq 0 not anchored yet: upto is -1
    assert seqs_waiting(ob) == [0, 1, 3]
    ob = load_outbox(d)
    assert seqs_waiting(ob) == [0, 1, 3] and ob.upto == -1


def test_segments_are_deleted_when_done():
    d = fresh()
    ob = load_outbox(d, seg_records=4)
    for s in range(12):
        ob.append(s, msg(s))
    assert segfiles(d) == ["00000001.seg", "00000002.seg", "00000003.seg"]
    ob.ack(5, [])
    assert segfiles(d) == ["00000002.seg", "00000003.seg"]
    ob.ack(11, [])                         # the last one is full, so it goes too
    assert segfiles(d) == [] and ob.pending == 0
    ob.append(12, msg(12))
    assert segfiles(d) == ["00000004.seg"]
    ob.ack(12, [])                         # not full: kept for the next appends
    assert segfiles(d) == ["00000004.seg"]
    ob.append(13, msg(13))
    assert segfiles(d) == ["00000004.seg"]
    ob = load_outbox(d, seg_records=4)
    assert seqs_waiting(ob) == [13]
    ob.ack(13, [])
    assert segfiles(d) == []               # after a reload a done segment is never appended to


def test_ack_beyond_what_was_appended_is_clamped():
    d = fresh()
    ob = load_outbox(d)
    for s in range(3):
        ob.append(s, msg(s))
    assert ob.ack(1000000, [2000000]) == 3     # a wrong (or hostile) ack
    ob.append(3, msg(3))
    ob.append(4, msg(4))
    ob = load_outbox(d)
    assert seqs_waiting(ob) == [3, 4] and ob.upto == 2   # future readings were not skipped


def test_drop_one_unreadable_record():
    d = fresh()
    ob = load_outbox(d)
    for s in range(3):
        ob.append(s, msg(s))
    g, i, s = list(ob.waiting())[1]
    ob.drop(g, i)
    assert seqs_waiting(ob) == [0, 2] and ob.dropped == 1
    ob = load_outbox(d)
    assert seqs_waiting(ob) == [0, 2] and ob.dropped == 1


def test_torn_tail_is_dropped_and_appends_continue():
    d = fresh()
    ob = load_outbox(d)
    for s in range(5):
        ob.append(s, msg(s))
    path = d + "/outbox/" + segfiles(d)[-1]
    # a power cut in the middle of the sixth record: its header and part of its payload
    with open(path, "rb") as f:
        first = f.read(12 + len(msg(0)))
    with open(path, "ab") as f:
        f.write(first[:20])
    ob = load_outbox(d)
    assert ob.pending == 5 and ob.corrupt == 1
    ob.append(5, msg(5))
    assert len(segfiles(d)) == 2           # new segment after a reload
    ob = load_outbox(d)
    assert [(s, ob.read(g, i)) for g, i, s in ob.waiting()] == [(s, msg(s)) for s in range(6)]


def test_torn_header_and_corrupt_crc():
    d = fresh()
    ob = load_outbox(d)
    for s in range(6):
        ob.append(s, msg(s))
    path = d + "/outbox/" + segfiles(d)[0]
    with open(path, "ab") as f:
        f.write(b"\xa7\x01")                # two bytes of a header
    assert seqs_waiting(load_outbox(d)) == list(range(6))
    # flip one payload byte of record 3: records from there on are lost, none before
    with open(path, "rb") as f:
        data = bytearray(f.read())
    off = sum(12 + len(msg(s)) for s in range(3)) + 12 + 5
    data[off] ^= 0x40
    with open(path, "wb") as f:
        f.write(data)
    ob = load_outbox(d)
    assert seqs_waiting(ob) == [0, 1, 2] and ob.corrupt == 1


def test_torn_ack_log_record_is_ignored():
    d = fresh()
    ob = load_outbox(d)
    for s in range(6):
        ob.append(s, msg(s))
    ob.ack(1, [])
    with open(d + "/outbox/acks.log", "ab") as f:
        f.write(b"\xa7\x02\x00\x00\x05")   # a torn ACK record (would be upto 4)
    ob = load_outbox(d)
    assert seqs_waiting(ob) == [2, 3, 4, 5]
    ob.ack(3, [])                           # appending after the torn record...
    ob = load_outbox(d)
    # ...is unreadable behind it, so the log must be compacted or the ack is lost on reload
    assert seqs_waiting(ob) == [4, 5], seqs_waiting(ob)


def test_bound_drops_oldest_and_counts():
    d = fresh()
    ob = load_outbox(d, max_records=5)
    for s in range(8):
        ob.append(s, msg(s))
    assert ob.pending == 5 and ob.dropped == 3
    assert seqs_waiting(ob) == [3, 4, 5, 6, 7]
    ob = load_outbox(d, max_records=5)
    assert ob.dropped == 3 and seqs_waiting(ob) == [3, 4, 5, 6, 7]


def test_segment_count_bound():
    d = fresh()
    ob = load_outbox(d, max_records=8, seg_records=2)       # at most 8 // 2 + 2 = 6 segments
    for s in range(12):
        ob.append(s, msg(s))
    assert ob.pending == 8 and ob.dropped == 4
    ob.ack(-1, [5, 7, 9, 11])              # one waiting reading in each of 4 segments
    assert len(segfiles(d)) == 4 and ob.pending == 4
    for s in range(12, 16):
        ob.append(s, msg(s))
    assert len(segfiles(d)) == 6
    ob.append(16, msg(16))                 # a 7th segment: the oldest segment's reading goes
    assert len(segfiles(d)) == 6 and ob.dropped == 5
    assert seqs_waiting(ob) == [6, 8, 10, 12, 13, 14, 15, 16]
    ob = load_outbox(d, max_records=8, seg_records=2)
    assert ob.dropped == 5 and seqs_waiting(ob) == [6, 8, 10, 12, 13, 14, 15, 16]


def test_ack_log_compaction_keeps_state():
    d = fresh()
    ob = load_outbox(d, max_records=50, seg_records=8)
    s = 0
    for _round in range(120):
        for _ in range(3):
            ob.append(s, msg(s))
            s += 1
        # ack all but the newest two, plus one out-of-order extra
        ob.ack(s - 3, [s - 1])
    size = os.stat(d + "/outbox/acks.log")[6]
    assert size <= 2048 + 64, size
    ob2 = load_outbox(d, max_records=50, seg_records=8)
    assert seqs_waiting(ob2) == seqs_waiting(ob) == [s - 2]
    assert ob2.upto == s - 3


def test_interrupted_log_compaction():
    d = fresh()
    ob = load_outbox(d)
    for s in range(4):
        ob.append(s, msg(s))
    ob.ack(1, [])
    ob.compact_log()
    log = d + "/outbox/acks.log"
    with open(log, "rb") as f:
        good = f.read()
    # crash while writing acks.tmp: acks.log is intact, the torn tmp is discarded
    with open(d + "/outbox/acks.tmp", "wb") as f:
        f.write(good[:5])
    ob = load_outbox(d)
    assert seqs_waiting(ob) == [2, 3]
    assert "acks.tmp" not in os.listdir(d + "/outbox")
    # crash on FAT between removing acks.log and renaming acks.tmp over it
    os.rename(log, d + "/outbox/acks.tmp")
    ob = load_outbox(d)
    assert seqs_waiting(ob) == [2, 3] and ob.upto == 1
    assert "acks.log" in os.listdir(d + "/outbox")


def test_republish_bookkeeping():
    d = fresh()
    ob = load_outbox(d)
    for s in range(3):
        ob.append(s, msg(s))
    w = list(ob.waiting())
    assert all(ob.sent_age(g, i, 0) is None for g, i, _ in w)
    ob.mark_sent(w[1][0], w[1][1], 12345)
    assert ob.sent_age(w[1][0], w[1][1], 12345 + 700) == 700
    ob.clear_sent()
    assert ob.sent_age(w[1][0], w[1][1], 0) is None
    ob.ack(0, [])
    assert not ob.is_waiting(w[0][0], w[0][1]) and ob.is_waiting(w[1][0], w[1][1])


def test_sent_age_across_the_ticks_wrap():
    # ticks_ms() wraps at 2**30 on a board and at 2**62 on the 64-bit Unix port; the outbox
    # keeps 29 bits of it
    d = fresh()
    ob = load_outbox(d)
    ob.append(0, msg(0))
    (g, i, _), = ob.waiting()
    for sent, now, age in ((2**30 - 10, 5, 15), (2**29 - 10, 2**29 + 5, 15), (5, 5, 0),
                           (2**40 + 3, 2**40 + 30003, 30000), (2**29 - 1, 2**30 + 99, 100)):
        for again in (False, True):
            ob.mark_sent(g, i, sent, again)
            assert ob.sent_age(g, i, now) == age, (sent, now, again)
            assert -2**30 <= g.sent[i] < 2**30     # a small int on a 32-bit port too


def test_ack_delay_from_the_newest_reading_published_once():
    d = fresh()
    ob = load_outbox(d)
    for s in range(7):
        ob.append(s, msg(s))
    w = {seq: (g, i) for g, i, seq in ob.waiting()}
    ob.mark_sent(*w[0], 100)
    ob.mark_sent(*w[1], 200)
    ob.mark_sent(*w[2], 300, True)     # a copy: its ack's delay is ambiguous
    ob.mark_sent(*w[4], 500)
    ob.mark_sent(*w[5], 600)
    assert ob.delay == -1
    assert ob.ack(0, []) == 1 and ob.delay == -1            # no `now`: no sample
    assert ob.ack(2, [], 40200) == 2 and ob.delay == 40000  # seq 1, the first sample as it is
    assert ob.ack(2, [], 90000) == 0 and ob.delay == 40000  # nothing removed: no sample
    assert ob.ack(-1, [3], 90000) == 1 and ob.delay == 40000  # 3: not published since load
    assert ob.ack(4, [], 500) == 1 and ob.delay == 35000    # 0 ms: smoothed with gain 1/8
    ob.mark_sent(*w[6], 2**29 - 100)                         # across the wrap of 29 bits
    assert ob.ack(6, [], 8100) == 2 and ob.delay == 35000 + (8200 - 35000) // 8


def test_random_operations_against_a_model():
    # a deterministic LCG, so the same sequence runs on every port
    state = [12345]

    def rnd(n):
        state[0] = (state[0] * 1103515245 + 12345) & 0x7FFFFFFF
        return (state[0] >> 8) % n

    d = fresh()
    cap = 20
    ob = load_outbox(d, max_records=cap, seg_records=4)
    model = []          # waiting seqs
    dropped = 0
    seq = 0
    for step in range(600):
        op = rnd(10)
        if op < 5:
            n = 1 + rnd(3)
            for _ in range(n):
                if len(model) >= cap:
                    model.pop(0)
                    dropped += 1
                ob.append(seq, msg(seq))
                model.append(seq)
                seq += 1
        elif op < 8 and model:
            upto = model[rnd(len(model))] - rnd(2)
            extra = [model[rnd(len(model))] for _ in range(rnd(3))]
            ob.ack(upto, extra)
            model = [s for s in model if s > upto and s not in extra]
        elif op == 8:
            # torn tail: part of a record at the end of the newest segment, then reload
            files = segfiles(d)
            if files:
                with open(d + "/outbox/" + files[-1], "ab") as f:
                    f.write(b"\xa7\x01\x40\x00" + b"\x00" * rnd(12))
            ob = load_outbox(d, max_records=cap, seg_records=4)
        else:
            ob = load_outbox(d, max_records=cap, seg_records=4)
        if seqs_waiting(ob) != model or ob.pending != len(model) or ob.dropped != dropped:
            raise AssertionError("step %d: outbox %r dropped %d, model %r dropped %d" % (
                step, seqs_waiting(ob), ob.dropped, model, dropped))
    for g, i, s in ob.waiting():
        assert ob.read(g, i) == msg(s)


def test_index_memory_per_record():
    d = fresh()
    gc.collect()
    before = gc.mem_alloc()
    ob = load_outbox(d, max_records=400, seg_records=64)
    for s in range(400):
        ob.append(s, msg(s))
    gc.collect()
    used = gc.mem_alloc() - before
    print("outbox RAM for 400 waiting records: %d bytes (%.1f per record)" % (used, used / 400))
    assert used < 400 * 40, used


# ---------------------------------------------------------------------------------------------

runner.main(globals(), after=lambda: runner.rmtree(_BASE))
