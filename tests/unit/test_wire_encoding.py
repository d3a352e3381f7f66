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
from gateway.sim.loadgen import (
    P256_N,
    DeviceSigner,
    DeviceState,
    broker_auth,
    cbor_encode,
    connect_packet,
    decode_ack,
    parse_broker_url,
    presign,
    publish_packet,
    redact_url,
    subscribe_packet,
)

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


def test_mqtt_packets_exact_bytes() -> None:
    # MQTT 3.1.1 §3.1: CONNECT, protocol level 4, clean session, keepalive 30, id "ab"
    assert connect_packet("ab", 30).hex() == "100e00044d5154540402001e00026162"
    # §3.3 PUBLISH QoS 1 (0x32), topic "t", packet id 7, payload "hi"; DUP sets 0x08
    assert publish_packet(b"t", b"hi", 7).hex() == "3207000174" + "0007" + "6869"
    assert publish_packet(b"t", b"hi", 7, dup=True)[0] == 0x3A
    # §3.8 SUBSCRIBE (0x82), packet id 1, topic "a/b", QoS 1
    assert subscribe_packet("a/b", 1).hex() == "82080001000361" + "2f62" + "01"
    # remaining length over 127 uses two bytes
    pkt = publish_packet(b"t", bytes(200), 1)
    assert pkt[1:3] == bytes([(205 % 128) | 0x80, 205 // 128])


def test_decode_ack() -> None:
    payload = cbor2.dumps({"upto": 9, "seqs": [12, 14], "entry": 3}, canonical=True)
    assert decode_ack(payload) == (9, [12, 14], 3)
    assert decode_ack(cbor2.dumps({"seqs": [0], "entry": 0}))[0] == -1


def test_parse_broker_url() -> None:
    assert parse_broker_url("mqtt://127.0.0.1:1999") == ("127.0.0.1", 1999)
    assert parse_broker_url("mqtt://localhost") == ("localhost", 1883)
    with pytest.raises(ConfigError):
        parse_broker_url("http://x:1")
    with pytest.raises(ConfigError):
        DeviceSigner("d", b"short")


def test_broker_url_credentials_and_tls() -> None:
    url = "mqtt://gw:s3cr%2Ft@127.0.0.1:1884"
    assert parse_broker_url(url) == ("127.0.0.1", 1884)
    assert broker_auth(url) == ("gw", "s3cr/t")
    assert broker_auth("mqtt://127.0.0.1") == (None, None)
    assert redact_url(url) == "mqtt://gw:***@127.0.0.1:1884"
    assert redact_url("mqtt://h:1") == "mqtt://h:1"
    assert parse_broker_url("mqtts://broker.example", tls_ok=True) == ("broker.example", 8883)
    with pytest.raises(ConfigError) as e:
        parse_broker_url("mqtts://u:pw@h:1")  # the load engine has no TLS
    assert "pw" not in str(e.value)
