# MicroPython tests of anchor/device.py (the pieces testable without a broker), the Unix board
# layer and the board selection. Run: micropython firmware/tests/test_device.py [name ...]
# (the loop against Mosquitto is tested in tests/integration/test_mqtt_client_device.py).

import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path.insert(0, _here + "/..")

import asyncio
import os

import runner

from anchor import Error, board_unix, cbor, cli, device, p256
from anchor.cbor_decode import decode
from anchor.cbor_types import Tag
from anchor.cose_verify import decode_sign1
from anchor.device_setup import make_loop, parse_args, requeue_last
from anchor.outbox_load import load_outbox
from anchor.state import Device

_BASE = (os.getenv("TMPDIR") or "/tmp").rstrip("/") + "/device-test-%d" % (
    int.from_bytes(os.urandom(4), "big"))
_count = [0]


def fresh():
    _count[0] += 1
    try:
        os.mkdir(_BASE)
    except OSError:
        pass
    d = "%s/%d" % (_BASE, _count[0])
    os.mkdir(d)
    return d


class NullClient:
    """Just enough of MQTTClient for make_loop and the ack path."""

    def __init__(self):
        self.subs = []
        self.will = self.birth = None
        self.on_message = None
        self.connects = 0

    def set_last_will(self, t, m, retain=True, qos=1):
        self.will = (t, m, retain, qos)

    def set_birth(self, t, m, retain=True, qos=1):
        self.birth = (t, m, retain, qos)

    def subscribe(self, t, qos=1):
        self.subs.append((t, qos))

    def isconnected(self):
        return False

    failures = 0
    error = None

    async def run(self):
        self.failures += 1      # a broker that cannot be reached: one failed attempt
        while True:
            await asyncio.sleep_ms(50)

    async def disconnect(self):
        pass


GATEWAY_SECRET = 0x1234567890ABCDEF   # the test gateway's downlink key


def gateway_hex():
    from anchor.p256_keys import public_key

    return "".join("%02x" % b for b in public_key(GATEWAY_SECRET))


def make_guard(dev):
    from anchor.device_setup import downlink_state

    return downlink_state(dev)


def loop_on_disk(count=None, secret="11" * 32):
    """A Loop on a fresh device directory with the Unix board and a NullClient: (loop, its
    output lines, the directory). The device trusts the test gateway's downlink key."""
    from anchor.downlink_setup import trust

    d = fresh()
    dev = Device.create(d, dev_id="dev-t", secret=secret)
    trust(dev, gateway_hex())
    board = board_unix.Board({"dir": d, "id": None}, thermal_root=d + "/no-thermal")
    board.seed(dev.dev_id)
    lines = []
    loop = make_loop(board, dev, load_outbox(d), NullClient(), make_guard(dev), interval=0,
                     count=count, out=lines.append)
    return loop, lines, d


def seal(key, topic, payload):
    """A COSE_Mac0 as the gateway makes it (gateway/wire/downlink.py)."""
    pb = bytearray()
    cbor.encode_into(pb, payload)
    t = bytearray()
    cbor.encode_into(t, topic)
    return b"\xd1\x84\x43\xa1\x01\x05\xa0" + pb + b"\x58\x20" + p256.hmac_sha256(
        key, b"\x84\x64MAC0\x43\xa1\x01\x05", t, pb)


def ack(loop, ctr, upto, seqs=(), entry=1, key=None):
    return seal(key or loop.dl[0], b"anchor/dev-t/ack", cbor.encode(
        {"ctr": ctr, "upto": upto, "seqs": list(seqs), "entry": entry}))


def command(loop, ctr, cid, op, args, key=None):
    return seal(key or loop.dl[0], b"anchor/dev-t/cmd", cbor.encode(
        {"ctr": ctr, "id": cid, "op": op, "args": args}))


# ---------------------------------------------------------------------------------------------

def test_parse_args_defaults_and_errors():
    o = parse_args(["--dir", "/x", "--count", "3", "--interval", "0.5"])
    assert o["dir"] == "/x" and o["count"] == 3 and o["interval"] == 0.5
    assert o["ack-timeout"] == 30.0 and o["outbox-max"] == 1000 and o["timeout"] == 120.0
    assert o["broker"] == (os.getenv("IOT_ANCHOR_BROKER") or "mqtt://127.0.0.1:1883")
    for bad, words in ((["--dir", "/x", "--bogus", "1"], "unknown argument"),
                       (["--dir", "/x", "--count"], "needs a value"),
                       (["--dir", "/x", "--count", "x"], "wants a number"),
                       (["--dir", "/x", "--count", "0"], "at least 1"),
                       (["--dir", "/x", "--interval", "-1"], "negative")):
        try:
            parse_args(bad)
        except Error as e:
            assert words in str(e), (bad, str(e))
        else:
            raise AssertionError("accepted %r" % bad)


def test_decode_ack():
    assert device.decode_ack(cbor.encode({"ctr": 1, "upto": 5, "seqs": [7, 9], "entry": 12})) \
        == (1, 5, [7, 9], 12)
    assert device.decode_ack(cbor.encode({"ctr": 2 ** 62, "upto": -1, "seqs": [], "entry": 0})) \
        == (2 ** 62, -1, [], 0)
    # unknown keys are ignored (later gateway versions may add some), whatever their values
    assert device.decode_ack(cbor.encode({"ctr": 0, "upto": 1, "seqs": [], "entry": 3,
                                          "x": "y"}))[1] == 1
    assert device.decode_ack(cbor.encode({
        "ctr": 3, "upto": 2, "seqs": [4], "entry": 3, "f": 1.5, "b": b"zz", "n": None,
        "t": True, "l": [1, {"a": [2]}], "tag": Tag(1, 5), "big": 2 ** 40, "neg": -2 ** 33})) \
        == (3, 2, [4], 3)
    ok = cbor.encode({"ctr": 1, "upto": 1})
    for bad in (b"\xff", cbor.encode([1, 2]), cbor.encode({"seqs": []}),
                cbor.encode({"upto": 1, "seqs": []}), cbor.encode({"ctr": -1, "upto": 1}),
                cbor.encode({"ctr": True, "upto": 1}),
                cbor.encode({"upto": -2, "seqs": []}), cbor.encode({"upto": 1, "seqs": [-1]}),
                cbor.encode({"upto": 1, "seqs": "x"}), cbor.encode({"upto": True}),
                b"", ok[:-1], ok + b"\x00", b"\x5f", b"\xa1\x62\xff\xfe\x01",
                b"\xa1\x81\x01\x02", b"\x9b" + b"\xff" * 8 + b"\x01",
                b"\x5b" + b"\xff" * 8 + b"\x01", b"\x81" * 20 + b"\x01"):
        try:
            device.decode_ack(bad)
        except ValueError:
            pass
        else:
            raise AssertionError("accepted %r" % bad)


def test_produce_then_ack_empties_outbox():
    loop, lines, d = loop_on_disk(count=3)
    for _ in range(3):
        loop.produce()
    assert loop.outbox.pending == 3 and loop.dev.seq == 3
    t = b"anchor/dev-t/ack"
    loop.on_message(t, ack(loop, 10, 0, [2]), False)
    assert loop.outbox.pending == 1 and loop.acked == 2
    assert lines[-1] == "ack upto=0 seqs=1 entry=1 removed=2 outbox=1", lines
    assert not loop.done
    loop.on_message(b"anchor/other/ack", ack(loop, 11, 9), False)
    assert loop.outbox.pending == 1        # another device's topic is ignored
    loop.on_message(t, b"\x00garbage", False)
    assert loop.dl[3] == {"malformed": 1} and lines[-1] == "bad-ack err=malformed"
    loop.on_message(t, ack(loop, 12, 2, entry=2), False)
    assert loop.outbox.pending == 0 and loop.done


def test_ack_wait_follows_the_smoothed_ack_delay():
    import time

    loop, lines, d = loop_on_disk()
    ob = loop.outbox
    assert loop.ack_ms == 30000 and ob.delay == -1 and loop.ack_wait() == 30000
    for _ in range(5):
        loop.produce()
    w = {seq: (g, i) for g, i, seq in ob.waiting()}
    t = b"anchor/dev-t/ack"

    def acked_after(ctr, seq, delay_ms, again=False):
        ob.mark_sent(*w[seq], time.ticks_add(time.ticks_ms(), -delay_ms), again)
        loop.on_message(t, ack(loop, ctr, seq), False)

    acked_after(1, 0, 40000)                # the ack's delay, measured on arrival
    assert 40000 <= ob.delay < 40100 and 80000 <= loop.ack_wait() < 80200
    acked_after(2, 1, 0)
    assert 35000 <= ob.delay < 35100 and 70000 <= loop.ack_wait() < 70200
    acked_after(3, 2, 900000, True)         # a copy's ack: no sample
    assert 35000 <= ob.delay < 35100
    acked_after(4, 3, 2000000)              # at most 8 x ack_ms
    assert ob.delay > 200000 and loop.ack_wait() == 240000
    ob.delay = 14000                        # under half of ack_ms: ack_ms
    assert loop.ack_wait() == 30000


class PublishClient(NullClient):
    def __init__(self):
        super().__init__()
        self.sent = []

    async def publish(self, topic, msg, qos=0):
        self.sent.append(msg)


def test_publish_due_waits_ack_wait_and_flags_copies():
    import time

    loop, lines, d = loop_on_disk()
    loop.client = PublishClient()
    for _ in range(2):
        loop.produce()
    ob = loop.outbox
    asyncio.run(loop.publish_due())
    assert len(loop.client.sent) == 2 and loop.published == 2 and loop.republished == 0
    asyncio.run(loop.publish_due())
    assert len(loop.client.sent) == 2           # not due: younger than ack_wait()
    ob.delay = 50000                            # acks come after 50 s: wait 100 s
    (g0, i0, _), (g1, i1, _) = ob.waiting()
    now = time.ticks_ms()
    ob.mark_sent(g0, i0, time.ticks_add(now, -99000))
    ob.mark_sent(g1, i1, time.ticks_add(now, -101000))
    asyncio.run(loop.publish_due())
    assert len(loop.client.sent) == 3 and loop.republished == 1 and lines[-1] == "repub n=1"
    assert seg_flag(g1, i1) and not seg_flag(g0, i0)
    assert ob.delay == 100000 and loop.ack_wait() == 200000    # late: the next wait doubles
    loop.client.connects += 1
    ob.clear_sent()                             # a reconnect: all due, none of them late
    asyncio.run(loop.publish_due())
    assert len(loop.client.sent) == 5 and ob.delay == 100000


def seg_flag(seg, i):
    return bool(seg.sent[i] & 0x20000000)


def test_forged_replayed_stale_and_plain_acks_are_refused():
    loop, lines, d = loop_on_disk()
    for _ in range(4):
        loop.produce()
    t = b"anchor/dev-t/ack"
    g = loop
    refusals = (
        (cbor.encode({"upto": 3, "seqs": [], "entry": 1}), "malformed"),   # the old, plain ack
        (ack(loop, 5, 3, key=bytes(32)), "forged"),                          # another key
        (ack(loop, 5, 3)[:-1] + b"\x00", "forged"),                          # a changed tag
        (ack(loop, 5, 3).replace(b"upto\x03", b"upto\x02"), "forged"),       # a changed payload
        (seal(g.dl[0], b"anchor/dev-t/cmd", cbor.encode({"ctr": 5, "upto": 3})), "forged"),
        (b"\xd1\x84\x43\xa1\x01\x05\xa0" + b"\x40" * 3, "malformed"),   # short
        (b"\xd1\x84\x43\xa1\x01\x05\xa0", "malformed"),
        (ack(loop, 5, 3)[:-1], "malformed"),                                  # truncated
        (ack(loop, 5, 3) + b"\x00", "malformed"),                            # trailing
        (b"", "malformed"),
    )
    for msg, reason in refusals:
        loop.on_message(t, msg, False)
        assert lines[-1] == "bad-ack err=" + reason, (lines[-1], reason)
    assert loop.outbox.pending == 4 and g.dl[1] == -1        # nothing moved
    first = ack(loop, 100, 0)
    loop.on_message(t, first, False)
    assert loop.outbox.pending == 3
    loop.on_message(t, first, False)                        # the same message again
    assert lines[-1] == "bad-ack err=replayed"
    loop.on_message(t, ack(loop, 100 - 30, 3), False)       # below the window
    assert lines[-1] == "bad-ack err=stale"
    loop.on_message(t, ack(loop, 99, 1), False)             # late, but new: accepted
    assert loop.outbox.pending == 2
    assert g.dl[3] == {"malformed": 6, "forged": 4, "replayed": 1, "stale": 1}, g.dl[3]
    # the counts go to flash when the loop ends (device.main) or with a command
    from anchor import downlink_cmd

    downlink_cmd.save(loop)
    r = device_status(d)
    assert r["downlink_refused"] == 12 and r["outbox_waiting"] == 2 and r["next_seq"] == 4
    assert r["downlink_top"] == 100
    # after a restart, the saved window still refuses the old counters
    dev2 = Device.load(d)
    g2 = make_loop(loop.board, dev2, load_outbox(d), NullClient(), make_guard(dev2))
    for c, why in ((100, "replayed"), (99, "replayed"), (50, "stale")):
        try:
            g2.fresh(c)
        except ValueError as e:
            assert str(e) == why, (c, e)
        else:
            raise AssertionError(c)
    g2.fresh(101)


def test_open_sealed_raises_only_value_error():
    """Random bytes, and every truncation and one-byte change of a valid sealed ack: refused
    with ValueError, never another exception (one would fail the MQTT handler, and the broker
    would deliver the message again and again)."""
    loop = loop_on_disk()[0]
    t = b"anchor/dev-t/ack"
    good = ack(loop, 7, 3, [5, 9])
    assert loop.open_sealed(t, good)
    bad = [os.urandom(k) for k in range(0, 120, 3)]
    bad += [good[:k] for k in range(len(good))]
    bad += [good[:k] + bytes(((good[k] + 1) & 255,)) + good[k + 1:] for k in range(len(good))]
    for m in bad:
        try:
            loop.open_sealed(t, m)
        except ValueError:
            continue
        raise AssertionError("accepted %r" % m)


def test_replay_window():
    g = loop_on_disk()[0]
    for c in (5, 3, 40, 39, 11):
        g.fresh(c)
    for c, why in ((5, "stale"), (10, "stale"), (39, "replayed"), (40, "replayed"),
                   (11, "replayed")):
        try:
            g.fresh(c)
        except ValueError as e:
            assert str(e) == why, (c, e)
        else:
            raise AssertionError("accepted %d" % c)
    g.fresh(12)
    g.fresh(2 ** 63)             # a big counter (a board's ints are 31-bit: a long int)
    g.fresh(2 ** 63 - 1)


def device_status(d):
    from anchor import cli_downlink

    return cli_downlink.status_info(d)


def confirmation(loop):
    """The newest confirmation waiting for the sender (taken off the queue)."""
    assert loop.dl[4]
    return loop.dl[4].pop()


def test_commands_run_once_and_are_confirmed():
    from anchor.cose_verify import verify1

    loop, lines, d = loop_on_disk()
    c = b"anchor/dev-t/cmd"
    loop.on_message(c, command(loop, 1, 7, "output", {"name": "fan", "on": True}), False)
    assert lines[-1] == "cmd id=7 op=output ok=1", lines
    with open(d + "/outputs/fan") as f:
        assert f.read() == "1"
    msg = confirmation(loop)
    assert not loop.dl[4]
    assert verify1(loop.dev.public_key, msg)
    with open(d + "/confirm.cose", "rb") as f:
        assert f.read() == msg
    p = decode(decode_sign1(msg)[2])
    assert p == {"v": 1, "dev": "dev-t", "cmd": 7, "op": "output", "ok": True,
                 "result": {"name": "fan", "on": True}}, p
    # the same command again, sealed anew (the gateway repeats it): not run, confirmed again
    loop.on_message(c, command(loop, 2, 7, "output", {"name": "fan", "on": True}), False)
    assert lines[-1] == "cmd-again id=7" and confirmation(loop) == msg
    # a power cut before the loop signed it: the payload again, signed anew (the same bytes:
    # RFC 6979 signatures are deterministic)
    os.remove(d + "/confirm.cose")
    loop.on_message(c, command(loop, 3, 7, "output", {"name": "fan", "on": True}), False)
    assert lines[-1] == "cmd-again id=7" and confirmation(loop) == msg
    # replayed (the same bytes), forged, stale (an older command id): refused, nothing runs
    before = len(lines)
    replay = command(loop, 30, 8, "output", {"name": "fan", "on": False})
    loop.on_message(c, replay, False)
    assert lines[-1] == "cmd id=8 op=output ok=1"
    for msg2, why in ((replay, "replayed"),
                      (command(loop, 40, 9, "output", {"name": "fan", "on": True},
                               key=bytes(32)), "forged"),
                      (command(loop, 50, 6, "ping", {}), "stale")):
        loop.on_message(c, msg2, False)
        assert lines[-1] == "bad-cmd err=" + why, (lines[-1], why)
    with open(d + "/outputs/fan") as f:
        assert f.read() == "0"
    loop.on_message(c, command(loop, 60, 10, "interval", {"seconds": 5}), False)
    assert loop.interval_ms == 5000
    loop.on_message(c, command(loop, 70, 11, "interval", {"seconds": 0}), False)
    assert lines[-1] == "cmd id=11 op=interval ok=0" and loop.interval_ms == 5000
    p = decode(decode_sign1(confirmation(loop))[2])
    assert p["ok"] is False and "seconds" in p["reason"] and "result" not in p
    loop.on_message(c, command(loop, 80, 12, "ping", {}), False)
    assert decode(decode_sign1(confirmation(loop))[2])["result"] == {"seq": 0, "outbox": 0}
    loop.on_message(c, command(loop, 90, 13, "selfdestruct", {}), False)
    assert lines[-1] == "cmd id=13 op=selfdestruct ok=0"
    assert len(lines) > before
    r = device_status(d)
    assert r["last_command"] == {"id": 13, "op": "selfdestruct", "args": {}, "ok": False,
                                 "reason": "unknown op"}, r
    assert r["downlink_refusals"] == {"replayed": 1, "forged": 1, "stale": 1}, r
    assert r["outputs"] == {"fan": False}
    # confirmations wait for the sender, at most 4 (the gateway resends what stays unconfirmed)
    loop.dl[4].clear()
    for k in range(6):
        loop.on_message(c, command(loop, 100 + k, 20 + k, "ping", {}), False)
    assert [decode(decode_sign1(m)[2])["cmd"] for m in loop.dl[4]] == [22, 23, 24, 25]


def test_topics_will_birth_subscription():
    loop, lines, d = loop_on_disk()
    c = loop.client
    assert c.will == ("anchor/dev-t/status", b"offline", True, 1)
    assert c.birth == ("anchor/dev-t/status", b"online", True, 1)
    assert c.subs == [("anchor/dev-t/ack", 1), ("anchor/dev-t/cmd", 1)]
    assert loop.t_readings == "anchor/dev-t/readings"


def test_requeue_last_after_crash_between_sign_and_append():
    loop, lines, d = loop_on_disk()
    loop.produce()
    # a crash right after signing: the state advanced, the outbox never saw the message
    msg = loop.dev.next_reading({"temp": 1.5}, None)
    dev2 = Device.load(d)
    ob2 = load_outbox(d)
    assert ob2.pending == 1 and dev2.last_message == msg
    loop2 = make_loop(loop.board, dev2, ob2, NullClient(), make_guard(dev2), out=lines.append)
    assert requeue_last(loop2) is True
    assert [s for _, _, s in ob2.waiting()] == [0, 1]
    g, i, _ = list(ob2.waiting())[1]
    assert ob2.read(g, i) == msg
    assert requeue_last(loop2) is False    # already there
    ob2.ack(1, [])
    dev3 = Device.load(d)
    assert requeue_last(make_loop(loop.board, dev3, load_outbox(d), NullClient(),
                                  make_guard(dev3))) is False   # acked: nothing to requeue


def test_readings_carry_sensor_data_and_clock():
    loop, lines, d = loop_on_disk()
    loop.produce()
    g, i, _ = list(loop.outbox.waiting())[0]
    r = decode(decode_sign1(loop.outbox.read(g, i))[2])
    assert r["dev"] == "dev-t" and r["seq"] == 0 and set(r["data"]) == {"temp"}
    assert isinstance(r["ts"], int) and r["ts"] > 1704067200


def test_a_dying_task_ends_the_loop():
    class BrokenBoard(board_unix.Board):
        def read_sensors(self):
            raise RuntimeError("sensor bus hung")

    for count in (None, 3):
        loop, lines, d = loop_on_disk(count=count)
        loop.board = BrokenBoard({"dir": d, "id": None}, thermal_root=d)
        try:
            ok = asyncio.run(loop.run())
        except Error as e:
            assert count is None and "producer task failed: RuntimeError" in str(e)
        else:
            assert count == 3 and ok is False
        assert "sensor bus hung" in loop.crash
        assert '"error": "producer task failed' in cli.run_summary(loop, False)


def test_unix_board_simulated_signal():
    d = fresh()
    b = board_unix.Board({"dir": d, "id": None}, thermal_root=d)
    assert b.thermal is None and b.name == "unix" and b.data_dir() == d
    b.seed("dev-1")
    vals = [b.simulated(1000000 + 10 * k) for k in range(60)]
    assert all(16 <= v <= 26 for v in vals), vals
    assert max(vals) - min(vals) > 0.5               # it moves (slow sine)...
    assert all(abs(vals[k + 1] - vals[k]) < 0.6 for k in range(59))   # ...slowly
    b2 = board_unix.Board({"dir": d, "id": None}, thermal_root=d)
    b2.seed("dev-1")
    assert [b2.simulated(1000000 + 10 * k) for k in range(60)] == vals   # reproducible
    b3 = board_unix.Board({"dir": d, "id": None}, thermal_root=d)
    b3.seed("dev-2")
    assert [b3.simulated(1000000 + 10 * k) for k in range(60)] != vals   # per device
    assert set(b.read_sensors()) == {"temp"}
    t = b.time()
    assert isinstance(t, int) and t > 1704067200


def test_unix_board_thermal_zone():
    d = fresh()
    os.mkdir(d + "/thermal_zone0")
    os.mkdir(d + "/thermal_zone1")
    with open(d + "/thermal_zone0/temp", "w") as f:
        f.write("garbage\n")                          # unreadable zone is skipped
    with open(d + "/thermal_zone1/temp", "w") as f:
        f.write("47250\n")
    b = board_unix.Board({"dir": d, "id": None}, thermal_root=d)
    assert b.thermal == d + "/thermal_zone1/temp"
    assert b.read_sensors() == {"cpu_temp": 47.25}
    os.remove(d + "/thermal_zone1/temp")              # vanished: fall back to simulation
    assert set(b.read_sensors()) == {"temp"} and b.sensor_errors == 1


def test_board_selection():
    from anchor import board

    assert board.PLATFORM == sys.platform
    assert board.Board is board_unix.Board           # on the Unix port


def test_board_interface_async_parts():
    d = fresh()
    b = board_unix.Board({"dir": d, "id": "x"}, thermal_root=d)
    assert b.device_id() == "x" and b.online()
    b.start_watchdog()
    b.feed()
    b.led(True)
    assert b.led_on

    async def main():
        await b.network_up()
        await b.sleep_fed(1)
    asyncio.run(main())


# ---------------------------------------------------------------------------------------------

runner.main(globals(), after=lambda: runner.rmtree(_BASE))
