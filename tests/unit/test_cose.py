"""Strict decoding of reading messages (gateway/cose.py): every rule has its named reason."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.wire import cose
from gateway.wire.cose import DECODE_REASONS, MAX_DEPTH, Rejection, decode, sig_structure

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers_readings import Device, cose_sign1  # noqa: E402

DEV = Device("sensor-1")
GOOD = DEV.message(5, bytes(range(32)), {"t": 21.5, "n": -3}, ts=1_700_000_123)


def reason(msg: bytes, **kw: int) -> str:
    with pytest.raises(Rejection) as info:
        decode(msg, **kw)
    assert info.value.reason in DECODE_REASONS
    return info.value.reason


def parts(msg: bytes) -> list:
    return list(cbor2.loads(msg).value)


def rebuild(protected: bytes, unprotected: object, payload: bytes, sig: object) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, payload, sig]))


def test_valid_message_decodes_to_its_fields() -> None:
    d = decode(GOOD)
    assert (d.dev, d.seq, d.ts, d.prev, d.data) == ("sensor-1", 5, 1_700_000_123,
                                                     bytes(range(32)), {"t": 21.5, "n": -3})
    p, _, payload, sig = parts(GOOD)
    assert d.protected == p and d.payload == payload and d.signature == sig
    assert d.to_be_signed == cbor2.dumps(["Signature1", p, b"", payload])
    assert d.digest == hashlib.sha256(GOOD).digest()


def test_ts_is_optional_and_unknown_keys_are_ignored() -> None:
    m = DEV.message(0, bytes(32), ts=None, extra={"fw": "1.2", "zz": {"nested": [1, 2.5]}})
    d = decode(m)
    assert d.ts is None and d.seq == 0


@pytest.mark.parametrize("case,expected", [
    ("too_large", "too_large"),
    ("empty", "cbor_malformed"),
    ("truncated", "cbor_malformed"),
    ("trailing", "trailing_bytes"),
    ("untagged", "not_tag18"),
    ("tag98", "not_tag18"),
    ("array3", "not_array4"),
    ("array5", "not_array4"),
    ("protected_text", "bad_protected"),
    ("protected_extra_label", "bad_protected"),
    ("protected_no_kid", "bad_protected"),
    ("alg_es384", "unsupported_alg"),
    ("alg_eddsa", "unsupported_alg"),
    ("unprotected_nonempty", "bad_unprotected"),
    ("sig_63", "bad_signature_length"),
    ("sig_65", "bad_signature_length"),
    ("sig_text", "bad_signature_length"),
    ("payload_nil", "bad_payload"),
    ("payload_array", "bad_payload"),
    ("payload_dup_key", "bad_payload"),
    ("missing_seq", "missing_field"),
    ("missing_prev", "missing_field"),
    ("seq_negative", "bad_field"),
    ("seq_text", "bad_field"),
    ("prev_31", "bad_field"),
    ("data_text_value", "bad_field"),
    ("ts_float", "bad_field"),
    ("v2", "unsupported_version"),
    ("dev_kid", "dev_kid_mismatch"),
    ("indefinite", "cbor_malformed"),
    ("huge_bstr", "cbor_malformed"),
    ("huge_map", "cbor_malformed"),
    ("deep", "too_deep"),
    ("bad_utf8", "cbor_malformed"),
])
def test_each_rule_has_its_reason(case: str, expected: str) -> None:
    p, u, payload, sig = parts(GOOD)
    reading = cbor2.loads(payload)

    def with_payload(**changes: object) -> bytes:
        r = dict(reading)
        for k, v in changes.items():
            if v is None:
                r.pop(k)
            else:
                r[k] = v
        return rebuild(p, {}, cbor2.dumps(r, canonical=True), sig)

    msgs = {
        "too_large": GOOD + bytes(2048),
        "empty": b"",
        "truncated": GOOD[:-10],
        "trailing": GOOD + b"\x00",
        "untagged": cbor2.dumps([p, {}, payload, sig]),
        "tag98": cbor2.dumps(cbor2.CBORTag(98, [p, {}, payload, sig])),
        "array3": cbor2.dumps(cbor2.CBORTag(18, [p, {}, payload])),
        "array5": cbor2.dumps(cbor2.CBORTag(18, [p, {}, payload, sig, b""])),
        "protected_text": rebuild("x", {}, payload, sig),
        "protected_extra_label": rebuild(cbor2.dumps({1: -7, 4: b"sensor-1", 3: 0}), {},
                                         payload, sig),
        "protected_no_kid": rebuild(cbor2.dumps({1: -7}), {}, payload, sig),
        "alg_es384": DEV.message(5, bytes(32), alg=-35),
        "alg_eddsa": DEV.message(5, bytes(32), alg=-8),
        "unprotected_nonempty": rebuild(p, {4: b"sensor-1"}, payload, sig),
        "sig_63": rebuild(p, {}, payload, sig[:63]),
        "sig_65": rebuild(p, {}, payload, sig + b"\x00"),
        "sig_text": rebuild(p, {}, payload, "x" * 64),
        "payload_nil": rebuild(p, {}, None, sig),  # type: ignore[arg-type]
        "payload_array": rebuild(p, {}, cbor2.dumps([1, 2]), sig),
        "payload_dup_key": rebuild(p, {}, _with_raw_key(payload, b"\x61v")[:-1] + b"\x01", sig),
        "missing_seq": with_payload(seq=None),
        "missing_prev": with_payload(prev=None),
        "seq_negative": with_payload(seq=-1),
        "seq_text": with_payload(seq="5"),
        "prev_31": with_payload(prev=bytes(31)),
        "data_text_value": with_payload(data={"t": "hot"}),
        "ts_float": with_payload(ts=1.5),
        "v2": with_payload(v=2),
        "dev_kid": DEV.message(5, bytes(32), dev="sensor-2"),
        "indefinite": b"\xd2\x9f" + GOOD[2:] + b"\xff",
        "huge_bstr": b"\xd2\x84\x5b\xff\xff\xff\xff\xff\xff\xff\xff",
        "huge_map": rebuild(p, {}, b"\xbb\x7f\xff\xff\xff\xff\xff\xff\xff", sig),
        "deep": rebuild(p, {}, cbor2.dumps(dict(reading, x=_nest(MAX_DEPTH + 2)),
                                           canonical=True), sig),
        "bad_utf8": rebuild(p, {}, _with_raw_key(payload, b"\x62\xc3\x28"), sig),
    }
    assert reason(msgs[case]) == expected


def _nest(depth: int) -> object:
    v: object = 1
    for _ in range(depth):
        v = [v]
    return v


def _with_raw_key(payload: bytes, key: bytes) -> bytes:
    """Add one more pair (raw key bytes -> 0) to the payload map (count < 23)."""
    assert 0xA0 <= payload[0] < 0xB7
    return bytes([payload[0] + 1]) + payload[1:] + key + b"\x00"


def test_size_limit_is_configurable() -> None:
    assert reason(GOOD, max_size=len(GOOD) - 1) == "too_large"
    assert decode(GOOD, max_size=len(GOOD)).seq == 5


def test_sig_structure_matches_cbor2() -> None:
    for n in (0, 23, 24, 255, 256, 70000):
        assert sig_structure(b"p" * n, b"q" * n) == cbor2.dumps(["Signature1", b"p" * n, b"",
                                                                 b"q" * n])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.integers(0, len(GOOD)))
def test_never_raises_anything_but_rejection(junk: bytes, cut: int) -> None:
    for msg in (junk, GOOD[:cut] + junk, GOOD[:cut] + junk + GOOD[cut:]):
        f = cose.fields(msg)  # the verifier's fast path: never raises either
        fv = cose.fields_and_values(msg)
        try:
            d = decode(msg)
        except Rejection as r:
            assert r.reason in DECODE_REASONS
            assert f is None and fv is None
        else:
            assert f is None or f == (d.dev, d.seq, d.prev, d.to_be_signed, d.signature)
            assert fv is None or repr(fv) == repr((*f, d.ts, d.data))


def test_a_message_cbor2_would_reencode_is_kept_byte_exact() -> None:
    # non-shortest length head on the payload: still decodes, and raw stays as received
    p, _, payload, sig = parts(GOOD)
    head = b"\x59" + len(payload).to_bytes(2, "big")
    msg = b"\xd2\x84" + cbor2.dumps(p) + b"\xa0" + head + payload + cbor2.dumps(sig)
    d = decode(msg)
    assert d.raw == msg and d.payload == payload
    assert cose_sign1(p, payload, sig) != msg


def _general(msg: bytes) -> object:
    try:
        return cose.decode_general(msg)
    except Rejection as r:
        return r.reason


def _fast_or_none(msg: bytes) -> object:
    try:
        return cose.decode_firmware_layout(msg)
    except (IndexError, ValueError):
        return None


_values = st.one_of(st.integers(-(2**64), 2**64 - 1),
                    st.floats(allow_nan=False, width=16), st.floats(allow_nan=False, width=32),
                    st.floats(allow_nan=False))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dev=st.text(st.characters(codec="utf-8"), min_size=1, max_size=30).filter(
           lambda s: len(s.encode()) <= 64),
       seq=st.integers(0, 2**64 - 1), ts=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
       data=st.dictionaries(st.text(max_size=8), _values, max_size=6),
       cut=st.integers(0, 400), flip=st.integers(0, 255))
def test_fast_path_agrees_with_the_general_parser(dev: str, seq: int, ts: int | None,
                                                  data: dict, cut: int, flip: int) -> None:
    reading = {"v": 1, "dev": dev, "seq": seq, "prev": bytes(32), "data": data}
    if ts is not None:
        reading["ts"] = ts
    protected = cbor2.dumps({1: -7, 4: dev.encode()}, canonical=True)
    msg = cose_sign1(protected, cbor2.dumps(reading, canonical=True), bytes(range(64)))
    variants = [msg]
    if cut < len(msg):
        variants.append(msg[:cut] + bytes([msg[cut] ^ flip]) + msg[cut + 1:])
        variants.append(msg[:cut] + msg[cut + 1:])
    for m in variants:
        fast = _fast_or_none(m)
        if fast is not None:  # repr: a bit flip can make a NaN, and NaN != NaN
            assert repr(fast) == repr(_general(m))
        f = cose.fields(m)
        fv = cose.fields_and_values(m)
        assert (f is None) == (fv is None)
        if f is not None:  # the verifier's path: exactly what the strict decoder gives
            d = cose.decode(m)
            assert f == (d.dev, d.seq, d.prev, d.to_be_signed, d.signature)
            # with the values (repr: NaN != NaN; type: 1 == 1.0 but not as a sensor value)
            assert repr(fv) == repr((*f, d.ts, d.data))
            assert [type(v) for v in fv[6].values()] == [type(v) for v in d.data.values()]
    if seq < 2**63 and all(len(k.encode()) < 24 for k in data):
        # the canonical form is what the fast path exists for (sensor names below 24 bytes)
        assert _fast_or_none(msg) is not None and _fast_or_none(msg) == _general(msg)
        if all(0 < len(k) == len(k.encode()) for k in data):  # non-empty ASCII names
            assert cose.fields(msg) is not None


def _reading(dev: str, data_bytes: bytes, seq: int = 7) -> bytes:
    """A message in the firmware's layout with the data map given as raw CBOR bytes."""
    kid = dev.encode()
    pay = (b"\xa5\x61v\x01\x63dev" + cbor2.dumps(dev) + b"\x63seq" + cbor2.dumps(seq)
           + b"\x64data" + data_bytes + b"\x64prev\x58\x20" + bytes(32))
    return cose_sign1(cbor2.dumps({1: -7, 4: kid}, canonical=True), pay, bytes(range(64)))


def test_fields_is_the_strict_decoders_answer_on_the_firmware_layout() -> None:
    d = decode(GOOD)
    assert cose.fields(GOOD) == (d.dev, d.seq, d.prev, d.to_be_signed, d.signature)
    # the layout with a data map of 0..3 names, in deterministic order
    for data in (b"\xa0", b"\xa1\x61t\x01", b"\xa3\x61h\x18\x28\x61p\xf9\x3c\x00\x61t\x20"):
        m = _reading("s-1", data)
        d = decode(m)
        assert cose.fields(m) == (d.dev, d.seq, d.prev, d.to_be_signed, d.signature)
        assert cose.fields_and_values(m) == (*cose.fields(m), d.ts, d.data)
    d = decode(GOOD)
    assert cose.fields_and_values(GOOD) == (*cose.fields(GOOD), d.ts, d.data)
    assert d.ts is not None and d.data


def test_fields_hands_everything_unusual_to_the_strict_decoder() -> None:
    # a repeated sensor name: the strict decoder refuses it, fields must not accept it
    dup = _reading("s-1", b"\xa2\x61t\x01\x61t\x02")
    assert cose.fields(dup) is None and reason(dup) == "bad_field"
    # names out of deterministic order, a non-ASCII name: valid, but for decode to read
    for data in (b"\xa2\x61t\x01\x61h\x02", b"\xa1\x62\xc3\xa9\x01"):
        m = _reading("s-1", data)
        assert cose.fields(m) is None and decode(m).seq == 7
    # a non-shortest protected-header length: valid CBOR, but the Sig_structure must be
    # built with the shortest head, so it cannot be sliced from the message
    p, u, payload, sig = parts(GOOD)
    m = b"\xd2\x84\x58" + bytes([len(p)]) + p + b"\xa0" + cbor2.dumps(payload) + cbor2.dumps(sig)
    assert cose.fields(m) is None and decode(m).to_be_signed == decode(GOOD).to_be_signed
    # a kid holding the bytes that follow it in the layout: either path gives the same answer
    for dev in ("a\xa0X", "\xa0\x58\x5c" * 5):
        m = _reading(dev, b"\xa1\x61t\x01")
        f, d = cose.fields(m), decode(m)
        assert f is None or f == (d.dev, d.seq, d.prev, d.to_be_signed, d.signature)


def test_fields_does_not_backtrack() -> None:
    """The pattern has a fixed kid length (read from its head) and self-delimiting parts
    elsewhere: a message built to look like the layout for as long as possible, with the kid
    and the data map full of the bytes that follow them, still costs far less than a
    signature check (about 60 us)."""
    import time

    kid = ("\xa0Y\x07\xa5av\x01" * 8).encode()[:63]  # 7 bytes of 9 each: whole UTF-8
    names = [(b"\x64data\x77\x61v\x01" * 3)[:21] + b"%02d" % k for k in range(23)]
    pay = (b"\xa5\x61v\x01\x63dev\x78\x3f" + kid + b"\x63seq\x00\x64data\xb7"
           + b"".join(b"\x77" + name + b"\x1b" + bytes(8) for name in names)
           + b"\x64prev\x58\x20" + bytes(32))
    msg = cose_sign1(cbor2.dumps({1: -7, 4: kid}, canonical=True), pay, bytes(range(64)))
    for bad in (msg[:-1], msg[:-66] + b"\x00" + msg[-65:], msg.replace(b"\x64prev", b"\x64prew")):
        best = float("inf")
        for _ in range(5):      # best of 5: a busy machine's descheduling is not the parser's
            t0 = time.perf_counter()
            for _ in range(100):
                assert cose.fields(bad) is None
            best = min(best, (time.perf_counter() - t0) / 100)
        assert best < 0.001, f"{best * 1e6:.0f} us per call"
    d = decode(msg)
    assert cose.fields(msg) == (d.dev, d.seq, d.prev, d.to_be_signed, d.signature)
