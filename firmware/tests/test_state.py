# Device state tests under MicroPython (Unix port: real files in a temporary directory).
# Run: micropython firmware/tests/test_state.py [test_name ...]

import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path.insert(0, _here + "/..")
sys.path.insert(0, _here)

import json
import os
import time
from binascii import hexlify

import runner
from runner import raises

from anchor import Error, cose, state, state_create
from anchor.cbor_decode import decode
from anchor.cose_verify import decode_sign1, verify1
from anchor.p256_keys import public_key
from anchor.state import Device

SECRET_HEX = "c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721"


def _tmpdir():
    base = os.getenv("TMPDIR") or "/tmp"
    d = "%s/anchor-state-%s" % (base, hexlify(os.urandom(6)).decode())
    return d


def _with_dir(fn):
    d = _tmpdir()
    try:
        fn(d)
    finally:
        runner.rmtree(d)


def _payload(msg):
    return decode(decode_sign1(msg)[2])


def _read_json(path):
    with open(path) as f:
        return json.loads(f.read())


def test_create_and_files():
    def t(d):
        dev = Device.create(d, dev_id="node-1", secret=SECRET_HEX)
        assert dev.dev_id == "node-1"
        assert dev.public_key == public_key(int(SECRET_HEX, 16))
        assert dev.seq == 0 and dev.prev == bytes(32) and dev.last_message is None
        key = _read_json(d + "/key.json")
        assert key == {"v": 1, "id": "node-1", "secret": SECRET_HEX,
                       "public": hexlify(dev.public_key).decode()}
        assert _read_json(d + "/seq.json") == {"v": 1, "reserved_upto": 0}
        assert sorted(os.listdir(d)) == ["key.json", "seq.json"]

    _with_dir(t)


def test_create_refuses_existing_state():
    def t(d):
        Device.create(d, secret=SECRET_HEX)
        assert raises(Error, Device.create, d)

    _with_dir(t)


def test_chain_seq_prev_and_reservation():
    def t(d):
        dev = Device.create(d, dev_id="node-1", secret=SECRET_HEX)
        pub = dev.public_key
        prev = bytes(32)
        for i in range(70):
            msg = dev.next_reading({"i": i}, ts=1735689600 + i)
            assert verify1(pub, msg)
            r = _payload(msg)
            assert r["seq"] == i and r["prev"] == prev and r["dev"] == "node-1"
            assert r["ts"] == 1735689600 + i and r["data"] == {"i": i} and r["v"] == 1
            prev = cose.message_hash(msg)
            assert dev.prev == prev and dev.seq == i + 1 and dev.last_message == msg
        # Reserved in blocks of 64, before use: seq 0 reserved 0..63, seq 64 reserved ..127.
        assert _read_json(d + "/seq.json")["reserved_upto"] == 128
        with open(d + "/last.cose", "rb") as f:
            assert f.read() == dev.last_message

    _with_dir(t)


def test_reload_continues_the_chain():
    def t(d):
        dev = Device.create(d, secret=SECRET_HEX)
        for i in range(3):
            last = dev.next_reading({"x": i})
        dev2 = Device.load(d)
        assert dev2.dev_id == dev.dev_id and dev2.public_key == dev.public_key
        assert dev2.seq == 3 and dev2.prev == cose.message_hash(last)
        assert dev2.last_message == last
        msg = dev2.next_reading({"x": 3})
        r = _payload(msg)
        assert r["seq"] == 3 and r["prev"] == cose.message_hash(last)
        assert "ts" not in r  # ts=None leaves the key out

    _with_dir(t)


def test_lost_last_file_falls_back_to_reservation():
    # last.cose gone (damaged file system): never reuse a seq, restart prev from zeros.
    def t(d):
        dev = Device.create(d, secret=SECRET_HEX)
        for i in range(5):
            dev.next_reading({"x": i})
        os.remove(d + "/last.cose")
        dev2 = Device.load(d)
        assert dev2.seq == 64 and dev2.prev == bytes(32) and dev2.last_message is None
        assert _payload(dev2.next_reading({"x": 5}))["seq"] == 64
        assert _read_json(d + "/seq.json")["reserved_upto"] == 128

    _with_dir(t)


def test_damaged_last_file_falls_back_to_reservation():
    def t(d):
        dev = Device.create(d, secret=SECRET_HEX)
        dev.next_reading({"x": 1})
        with open(d + "/last.cose", "wb") as f:
            f.write(b"\xd2\x84garbage")
        dev2 = Device.load(d)
        assert dev2.seq == 64 and dev2.last_message is None

    _with_dir(t)


def test_tmp_copy_is_used_when_the_file_is_missing():
    # FAT: the old file was removed, the power went before the rename.
    def t(d):
        dev = Device.create(d, secret=SECRET_HEX)
        dev.next_reading({"x": 1})
        msg = dev.next_reading({"x": 2})
        os.rename(d + "/last.cose", d + "/last.cose.tmp")
        dev2 = Device.load(d)
        assert dev2.last_message == msg and dev2.seq == 2

    _with_dir(t)


def test_uncommitted_tmp_is_ignored_when_the_file_exists():
    # POSIX/littlefs: the power went between writing last.cose.tmp and renaming it; that
    # message was never returned, so the committed file wins.
    def t(d):
        dev = Device.create(d, secret=SECRET_HEX)
        msg = dev.next_reading({"x": 1})
        with open(d + "/last.cose.tmp", "wb") as f:
            f.write(b"half a mess")
        dev2 = Device.load(d)
        assert dev2.last_message == msg and dev2.seq == 1
        dev2.next_reading({"x": 2})  # and the next commit replaces the stale tmp
        assert sorted(os.listdir(d)) == ["key.json", "last.cose", "seq.json"]

    _with_dir(t)


def test_load_errors():
    def t(d):
        assert raises(Error, Device.load, d)  # no key
        Device.create(d, secret=SECRET_HEX)
        key = _read_json(d + "/key.json")
        key["public"] = hexlify(public_key(5)).decode()
        with open(d + "/key.json", "w") as f:
            f.write(json.dumps(key))
        assert raises(Error, Device.load, d)  # public key does not match
        with open(d + "/key.json", "w") as f:
            f.write("{not json")
        assert raises(Error, Device.load, d)

    _with_dir(t)


def test_next_reading_rejects_bad_input_without_advancing():
    def t(d):
        dev = Device.create(d, secret=SECRET_HEX)
        assert raises(Error, dev.next_reading, {"a": "x"})
        assert raises(Error, dev.next_reading, {"a": 1}, -5)
        assert raises(Error, dev.next_reading, {"a": 1}, 1.5)
        assert raises(Error, dev.next_reading, {"s%d" % i: i for i in range(300)})  # > 2 KiB
        assert dev.seq == 0 and dev.last_message is None
        # Regression: a failed attempt used to write the seq reservation first, so a reload
        # (a new process, as with the CLI) jumped to seq 64.
        assert Device.load(d).seq == 0
        assert _payload(dev.next_reading({"a": 1}))["seq"] == 0

    _with_dir(t)


def test_secret_and_id_validation():
    def t(d):
        assert raises(Error, Device.create, d, None, "00" * 32)  # zero
        assert raises(Error, Device.create, d, None, "ff" * 32)  # >= n
        assert raises(Error, Device.create, d, None, "zz" * 32)
        assert raises(Error, Device.create, d, None, "ab")
        assert raises(Error, Device.create, d, "a/b", SECRET_HEX)
        assert raises(Error, Device.create, d, "a+b", SECRET_HEX)
        assert raises(Error, Device.create, d, "", SECRET_HEX)
        assert raises(Error, Device.create, d, "x" * 65, SECRET_HEX)
        dev = Device.create(d, "A-z_0.9", bytes(31) + b"\x07")
        assert dev.dev_id == "A-z_0.9"

    _with_dir(t)


def test_default_id_is_platform_and_key_hash():
    def t(d):
        dev = Device.create(d, secret=SECRET_HEX)
        want = sys.platform + "-" + hexlify(cose.message_hash(dev.public_key)).decode()[:10]
        assert dev.dev_id == want
        assert Device.load(d).dev_id == want

    _with_dir(t)


def test_new_keys_are_random():
    def t(d):
        a = Device.create(d + "/a")
        b = Device.create(d + "/b")
        assert a.public_key != b.public_key and a.dev_id != b.dev_id

    _with_dir(t)


def test_new_key_continues_the_seqs():
    # provisioning's --new-key: remove the state, then create it again from the old device's
    # first unused seq (gateway/fleet/provision/onboard/key.py)
    def t(d):
        dev = Device.create(d, dev_id="node-1", secret=SECRET_HEX)
        for i in range(3):
            dev.next_reading({"x": i})
        assert dev.seq == 3 and dev.reserved_upto == 64
        with open(d + "/seq.json.tmp", "w") as f:
            f.write("{}")  # an unfinished write: removed too
        state_create.remove(d)
        assert os.listdir(d) == []
        first = max(dev.seq, dev.reserved_upto)
        new = Device.create(d, dev_id="node-1", first_seq=first)
        assert new.seq == 64 and new.reserved_upto == 64 and new.prev == bytes(32)
        assert new.public_key != dev.public_key
        assert _read_json(d + "/seq.json") == {"v": 1, "reserved_upto": 64}
        assert Device.load(d).seq == 64
        assert _payload(new.next_reading({"x": 3}))["seq"] == 64
        assert _read_json(d + "/seq.json")["reserved_upto"] == 128
        state_create.remove(d)  # again: missing files are fine

    _with_dir(t)


def test_unwritable_directory():
    def t(d):
        os.mkdir(d)
        with open(d + "/file", "w") as f:
            f.write("x")
        assert raises(Error, Device.create, d + "/file")
        assert raises(Error, Device.create, d + "/file/sub")

    _with_dir(t)


def test_unix_time():
    t = state.unix_time()
    assert isinstance(t, int)
    assert abs(t - time.time()) < 5  # the Unix port's epoch is 1970: no offset


runner.main(globals())
