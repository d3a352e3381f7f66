"""The CPython load engine's wire format, checked against independent code.

Independent oracles: cbor2 (decoding, canonical re-encoding), cryptography (verification),
the RFC 8949 Appendix A examples for float and integer encodings.
The byte-for-byte comparison with the firmware's `sign` command is in
tests/integration/test_loadgen_firmware.py (it needs the MicroPython binary).
"""

from __future__ import annotations

import hashlib
import math
import struct

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ConfigError
from gateway.sim.loadgen import DeviceState, presign
from gateway.wire.broker_url import parse_broker_url, redact_url
from gateway.wire.cbor import encode as cbor_encode
from gateway.wire.cose import P256_N
from gateway.wire.downlink import ack_payload, decode_ack_payload
from gateway.wire.signer import DeviceSigner
from gateway.wire.topics import device_from_topic, device_from_topic_bytes

# RFC 8949 Appendix A: value -> encoding (hex). Preferred serialisation of floats.
RFC8949_EXAMPLES = [
    (0, "00"), (23, "17"), (24, "1818"), (100, "1864"), (1000, "1903e8"),
    (1000000, "1a000f4240"), (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"), (-1, "20"), (-100, "3863"),
    (-1000, "3903e7"), (0.0, "f90000"), (-0.0, "f98000"), (1.0, "f93c00"),
    (1.1, "fb3ff199999999999a"), (1.5, "f93e00"), (65504.0, "f97bff"),
    (100000.0, "fa47c35000"), (3.4028234663852886e38, "fa7f7fffff"),
    (1.0e300, "fb7e37e43c8800759c"), (5.960464477539063e-8, "f90001"),
    (0.00006103515625, "f90400"), (-4.0, "f9c400"), (-4.1, "fbc010666666666666"),
    (math.inf, "f97c00"), (math.nan, "f97e00"), (-math.inf, "f9fc00"),
    ("", "60"), ("a", "6161"), ("IETF", "6449455446"), (b"", "40"),
    (b"\x01\x02\x03\x04", "4401020304"), ([1, [2, 3], [4, 5]], "8301820203820405"),
    ({}, "a0"), ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
]


@pytest.mark.parametrize(("value", "want"), RFC8949_EXAMPLES)
def test_cbor_rfc8949_examples(value: object, want: str) -> None:
    assert cbor_encode(value).hex() == want


def test_map_keys_sorted_bytewise_by_encoding() -> None:
    # length first (the head carries the length), then bytes: "v" < "ts" < "dev" < "seq"
    enc = cbor_encode({"seq": 1, "dev": "x", "v": 1, "ts": 2, "prev": b"", "data": {}})
    assert cbor2.loads(enc) == {"seq": 1, "dev": "x", "v": 1, "ts": 2, "prev": b"", "data": {}}
    keys_in_order = [k for k in ("v", "ts", "dev", "seq", "data", "prev")]
    positions = [enc.index(cbor_encode(k)) for k in keys_in_order]
    assert positions == sorted(positions)


json_numbers = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12), json_numbers, max_size=6))
def test_cbor_matches_cbor2_canonical(data: dict[str, int | float]) -> None:
    # cbor2's canonical mode also sorts keys by encoding and picks the shortest exact float.
    assert cbor_encode(data) == cbor2.dumps(data, canonical=True)
    assert cbor2.loads(cbor_encode(data)) == data


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False))
def test_float_is_shortest_exact(x: float) -> None:
    enc = cbor_encode(x)
    assert cbor2.loads(enc) == x
    # No shorter width holds the value exactly.
    widths = {0xF9: 0, 0xFA: 1, 0xFB: 2}
    for fmt in (">e", ">f")[: widths[enc[0]]]:
        try:
            assert struct.unpack(fmt, struct.pack(fmt, x))[0] != x
        except OverflowError:
            pass


def _verify(pub: bytes, msg: bytes) -> dict:
    """Independent check of one message: structure by cbor2, signature by cryptography."""
    tag = cbor2.loads(msg)
    assert isinstance(tag, cbor2.CBORTag) and tag.tag == 18
    protected, unprotected, payload, sig = tag.value
    assert cbor2.loads(protected) == {1: -7, 4: cbor2.loads(payload)["dev"].encode()}
    assert unprotected == {}
    assert len(sig) == 64
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    assert s <= P256_N // 2, "low-S"
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pub)
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    key.verify(encode_dss_signature(r, s), tbs, ec.ECDSA(hashes.SHA256()))
    reading = cbor2.loads(payload)
    assert cbor2.dumps(reading, canonical=True) == payload
    return reading


def test_signed_reading_verifies_and_chains() -> None:
    signer = DeviceSigner.generate("load-0001")
    st_ = DeviceState("load-0001", signer.secret)
    msgs = presign(st_, 1, 5)
    prev = bytes(32)
    for want_seq, (seq, msg) in enumerate(msgs):
        reading = _verify(signer.public_key, msg)
        assert seq == want_seq == reading["seq"]
        assert reading["v"] == 1 and reading["dev"] == "load-0001"
        assert reading["prev"] == prev
        assert set(reading["data"]) == {"temp", "rh"}
        prev = hashlib.sha256(msg).digest()
    assert st_.next_seq == 5 and st_.prev == prev


def test_signing_is_deterministic_and_low_s() -> None:
    signer = DeviceSigner(
        "dev", bytes.fromhex("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721")
    )
    a = signer.sign(3, bytes(32), {"t": 1.5}, 1700000000)
    b = signer.sign(3, bytes(32), {"t": 1.5}, 1700000000)
    assert a == b
    # Over many payloads some raw RFC 6979 signatures are high-S; all outputs are low-S.
    for seq in range(40):
        _verify(signer.public_key, signer.sign(seq, bytes(32), {"t": seq / 3}))
    tampered = bytearray(a)
    tampered[-1] ^= 1
    with pytest.raises(InvalidSignature):
        _verify(signer.public_key, bytes(tampered))


def test_ts_omitted_when_unset() -> None:
    signer = DeviceSigner.generate("d")
    reading = cbor2.loads(cbor2.loads(signer.sign(0, bytes(32), {"x": 1}, None)).value[2])
    assert "ts" not in reading


def test_decode_ack() -> None:
    payload = cbor2.dumps({"ctr": 5, "upto": 9, "seqs": [12, 14], "entry": 3}, canonical=True)
    assert decode_ack_payload(payload) == (5, 9, [12, 14], 3)
    assert decode_ack_payload(cbor2.dumps({"ctr": 0, "upto": -1, "seqs": [0], "entry": 0})) \
        == (0, -1, [0], 0)


def test_parse_broker_url() -> None:
    u = parse_broker_url("mqtt://127.0.0.1:1999")
    assert (u.host, u.port, u.tls, u.username, u.password) == ("127.0.0.1", 1999, False, None, None)
    assert parse_broker_url("mqtt://localhost").port == 1883
    assert parse_broker_url("10.0.0.1", bare_ok=True).url == "mqtt://10.0.0.1:1883"
    for bad in ("http://x:1", "mqtt://", "mqtt://h:99999", "mqtt://h/path", "h:1"):
        with pytest.raises(ConfigError):
            parse_broker_url(bad)
    with pytest.raises(ConfigError):
        DeviceSigner("d", b"short")


def test_broker_url_credentials_and_tls() -> None:
    url = "mqtt://gw:s3cr%2Ft@127.0.0.1:1884"
    u = parse_broker_url(url)
    assert (u.host, u.port, u.username, u.password) == ("127.0.0.1", 1884, "gw", "s3cr/t")
    assert u.shown == "mqtt://gw:***@127.0.0.1:1884"
    assert redact_url(url) == "mqtt://gw:***@127.0.0.1:1884"
    assert redact_url("mqtt://h:1") == "mqtt://h:1"
    t = parse_broker_url("mqtts://broker.example")
    assert (t.host, t.port, t.tls) == ("broker.example", 8883, True)
    with pytest.raises(ConfigError) as e:
        parse_broker_url("mqtts://u:pw@h:1", tls_ok=False)
    assert "pw" not in str(e.value)


def test_topic_and_ack_encoding() -> None:
    assert device_from_topic("anchor/dev-1/readings") == "dev-1"
    assert device_from_topic_bytes(b"anchor/dev-1/readings") == "dev-1"
    for bad in (b"anchor//readings", b"anchor/a/b/readings", b"anchor/\xff/readings",
                b"x/d/readings", b"anchor/d/ack"):
        assert device_from_topic_bytes(bad) == ""
    assert device_from_topic("anchor//readings") is None
    assert device_from_topic("anchor/a/b/readings") is None
    assert ack_payload(1, 4, [9, 7], 2) == cbor2.dumps(
        {"ctr": 1, "upto": 4, "seqs": [7, 9], "entry": 2}, canonical=True)
    # canonical key order: "ctr" < "seqs" < "upto" < "entry" (length first, then bytes)
    assert list(cbor2.loads(ack_payload(0, -1, [], 0))) == ["ctr", "seqs", "upto", "entry"]
    assert cbor2.loads(ack_payload(0, -1, [], 0))["upto"] == -1


@settings(max_examples=300, deadline=None)
@given(ctr=st.integers(0, 2**64 - 1), upto=st.integers(-1, 2**64 - 1),
       seqs=st.lists(st.integers(0, 2**64 - 1), max_size=40), entry=st.integers(0, 2**64 - 1))
def test_ack_encoding_is_cbor2s_canonical_form(ctr: int, upto: int, seqs: list[int],
                                               entry: int) -> None:
    """ack_payload writes the CBOR by hand: byte for byte what cbor2 gives, for every size of
    integer and array head."""
    assert ack_payload(ctr, upto, seqs, entry) == cbor2.dumps(
        {"ctr": ctr, "upto": upto, "seqs": sorted(seqs), "entry": entry}, canonical=True)


