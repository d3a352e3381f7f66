# MicroPython tests of anchor/device.py (the pieces testable without a broker), the Unix board
# layer and the board selection. Run: micropython firmware/tests/test_device.py [name ...]
# (the loop against Mosquitto is tested in tests/integration/test_mqtt_client_device.py).

import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path.insert(0, _here + "/..")

import asyncio
import os

import runner

from anchor import Error, board_unix, cbor, cli, device
from anchor.cbor_decode import decode
from anchor.cbor_types import Tag
from anchor.cose_verify import decode_sign1
from anchor.device_setup import make_loop, parse_args
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


def loop_on_disk(count=None, secret="11" * 32):
    """A Loop on a fresh device directory with the Unix board and a NullClient: (loop, its
    output lines, the directory)."""
    d = fresh()
    dev = Device.create(d, dev_id="dev-t", secret=secret)
    board = board_unix.Board({"dir": d, "id": None}, thermal_root=d + "/no-thermal")
    board.seed(dev.dev_id)
    lines = []
    loop = make_loop(board, dev, load_outbox(d), NullClient(), interval=0, count=count,
                     out=lines.append)
    return loop, lines, d


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
    assert device.decode_ack(cbor.encode({"upto": 5, "seqs": [7, 9], "entry": 12})) == \
        (5, [7, 9], 12)
    assert device.decode_ack(cbor.encode({"upto": -1, "seqs": [], "entry": 0})) == (-1, [], 0)
    # unknown keys are ignored (later gateway versions may add some), whatever their values
    assert device.decode_ack(cbor.encode({"upto": 1, "seqs": [], "entry": 3, "x": "y"}))[0] == 1
    assert device.decode_ack(cbor.encode({
        "upto": 2, "seqs": [4], "entry": 3, "f": 1.5, "b": b"zz", "n": None, "t": True,
        "l": [1, {"a": [2]}], "tag": Tag(1, 5), "big": 2 ** 40, "neg": -2 ** 33})) == \
        (2, [4], 3)
    ok = cbor.encode({"upto": 1})
    for bad in (b"\xff", cbor.encode([1, 2]), cbor.encode({"seqs": []}),
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
    loop.on_message(t, cbor.encode({"upto": 0, "seqs": [2], "entry": 1}), False)
    assert loop.outbox.pending == 1 and loop.acked == 2
    assert lines[-1] == "ack upto=0 seqs=1 entry=1 removed=2 outbox=1", lines
    assert not loop.done
    loop.on_message(b"anchor/other/ack", cbor.encode({"upto": 9, "seqs": []}), False)
    assert loop.outbox.pending == 1        # another device's topic is ignored
    loop.on_message(t, b"\x00garbage", False)
    assert loop.bad_acks == 1 and lines[-1].startswith("bad-ack err=")
    loop.on_message(t, cbor.encode({"upto": 2, "seqs": [], "entry": 2}), False)
    assert loop.outbox.pending == 0 and loop.done


def test_topics_will_birth_subscription():
    loop, lines, d = loop_on_disk()
    c = loop.client
    assert c.will == ("anchor/dev-t/status", b"offline", True, 1)
    assert c.birth == ("anchor/dev-t/status", b"online", True, 1)
    assert c.subs == [("anchor/dev-t/ack", 1)]
    assert loop.t_readings == "anchor/dev-t/readings"


def test_requeue_last_after_crash_between_sign_and_append():
    loop, lines, d = loop_on_disk()
    loop.produce()
    # a crash right after signing: the state advanced, the outbox never saw the message
    msg = loop.dev.next_reading({"temp": 1.5}, None)
    dev2 = Device.load(d)
    ob2 = load_outbox(d)
    assert ob2.pending == 1 and dev2.last_message == msg
    loop2 = make_loop(loop.board, dev2, ob2, NullClient(), out=lines.append)
    assert loop2.requeue_last() is True
    assert [s for _, _, s in ob2.waiting()] == [0, 1]
    g, i, _ = list(ob2.waiting())[1]
    assert ob2.read(g, i) == msg
    assert loop2.requeue_last() is False   # already there
    ob2.ack(1, [])
    assert make_loop(loop.board, Device.load(d), load_outbox(d), NullClient()).requeue_last() \
        is False                            # acked: nothing to requeue


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
