"""Fuzzing the strict reading decoder (gateway/cose.py) with hypothesis.

The promise under test: whatever the bytes, `decode` returns a `Decoded` or raises `Rejection`
with one of the named reasons, never anything else, and quickly. `decode` itself wraps the
parser in a catch-all that turns a stray exception into `cbor_malformed`; that would hide
exactly the bugs this file looks for, so the fuzz targets call the unwrapped
`decode_unguarded` and treat any other exception as a failure.

Three input families:
- random bytes;
- mutations of valid messages (bit flips, byte insertions and deletions, truncations, spliced
  CBOR heads with huge lengths, duplicated ranges);
- structured CBOR built with cbor2 from random Python values, placed where the decoder looks
  (the four COSE elements, the protected header, the Reading fields). For these there is an
  oracle: a plain reference check of the rules written on cbor2's decoding. Both must agree on
  accept/reject, and an accepted message must decode to the same fields as cbor2 reads.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from gateway.wire import cose
from gateway.wire.cose import DECODE_REASONS, MAX_DEPTH, MAX_MESSAGE, Decoded, Rejection

# Examples per property: a few hundred by default, more with IOT_ANCHOR_FUZZ_EXAMPLES (CI's
# bounded fuzz run sets it higher; see `make fuzz`).
EXAMPLES = int(os.environ.get("IOT_ANCHOR_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Wall-clock bound per message: a 2 KiB message is decoded in well under a millisecond; this
# generous bound catches super-linear blow-ups, not jitter on a shared machine.
MAX_SECONDS = 0.05


def run(msg: bytes) -> Decoded | Rejection:
    """Decode `msg` with the unwrapped parser; return the result or the rejection."""
    t0 = time.perf_counter()
    try:
        out: Decoded | Rejection = cose.decode_unguarded(msg, MAX_MESSAGE)
    except Rejection as r:
        out = r
    elapsed = time.perf_counter() - t0
    if elapsed >= MAX_SECONDS:  # descheduled on a busy machine? only the best of five counts
        elapsed = min(_time_once(msg) for _ in range(5))
    assert elapsed < MAX_SECONDS, f"decode took {elapsed * 1000:.1f} ms for {len(msg)} bytes"
    if isinstance(out, Rejection):
        assert out.reason in DECODE_REASONS, out.reason
        # The public entry point agrees exactly.
        with pytest.raises(Rejection) as info:
            cose.decode(msg)
        assert info.value.reason == out.reason
    else:
        again = cose.decode(msg)
        # (field by field: a NaN in data is not equal to itself)
        assert again.raw == out.raw and again.seq == out.seq and again.dev == out.dev
        assert same_numbers(again.data, out.data)
        check_accepted(msg, out)
    return out


def _time_once(msg: bytes) -> float:
    t0 = time.perf_counter()
    try:
        cose.decode_unguarded(msg, MAX_MESSAGE)
    except Rejection:
        pass
    return time.perf_counter() - t0


def check_accepted(msg: bytes, d: Decoded) -> None:
    """What an accepted message must satisfy, read back with cbor2 (an independent decoder)."""
    assert d.raw == msg and len(msg) <= MAX_MESSAGE
    assert len(d.signature) == 64 and len(d.prev) == 32
    outer = cbor2.loads(msg)
    assert isinstance(outer, cbor2.CBORTag) and outer.tag == 18
    protected, unprotected, payload, signature = outer.value
    assert (protected, payload, signature) == (d.protected, d.payload, d.signature)
    assert unprotected == {}
    hdr = cbor2.loads(protected)
    assert hdr == {1: -7, 4: d.dev.encode()}
    fields = cbor2.loads(payload)
    assert fields["v"] == 1 and fields["dev"] == d.dev and fields["seq"] == d.seq
    assert fields["prev"] == d.prev and fields.get("ts") == d.ts
    assert same_numbers(fields["data"], d.data)
    assert d.to_be_signed == cbor2.dumps(["Signature1", protected, b"", payload])


def same_numbers(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if type(x) is not type(y):
            return False
        if isinstance(x, float) and math.isnan(x):
            if not math.isnan(y):
                return False
        elif x != y:
            return False
    return True


# --- valid messages ---------------------------------------------------------------------------

ZERO = bytes(32)


def message(dev: str = "dev-01", seq: int = 7, ts: int | None = 1_760_000_000,
            data: dict[str, Any] | None = None, prev: bytes = ZERO,
            sig: bytes = bytes(range(64)), extra: dict[str, Any] | None = None,
            kid: bytes | None = None) -> bytes:
    """A well-formed reading (deterministic CBOR; the signature is not checked here)."""
    fields: dict[str, Any] = {"v": 1, "dev": dev, "seq": seq, "prev": prev,
                              "data": data if data is not None else {"t": 21.5, "rh": 40}}
    if ts is not None:
        fields["ts"] = ts
    fields.update(extra or {})
    protected = cbor2.dumps({1: -7, 4: kid if kid is not None else dev.encode()}, canonical=True)
    payload = cbor2.dumps(fields, canonical=True)
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, sig]), canonical=True)


VALID = [
    message(),
    message(ts=None, data={}),
    message(dev="x" * 64, seq=2**63 - 1, data={"a": -1, "b": 1.0e300, "c": 0.5}),
    message(extra={"fw": "1.2", "z": [1, {"k": b"v"}]}),
]


def test_valid_messages_decode() -> None:
    for msg in VALID:
        assert isinstance(run(msg), Decoded)


# --- family 1: random bytes ---------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=MAX_MESSAGE + 64))
@example(b"")
@example(b"\xd2")
@example(b"\xd2\x84")
@example(b"\xd2\x9f\xff")
@example(b"\xd2\x84\x5b\xff\xff\xff\xff\xff\xff\xff\xff")
def test_random_bytes(msg: bytes) -> None:
    run(msg)


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_after_a_valid_prefix(tail: bytes) -> None:
    """Random bytes behind the tag and array heads reach the element parsers."""
    run(b"\xd2\x84" + tail)
    run(b"\xd2\x84\x4a\xa2\x01\x26\x04\x46dev-01\xa0" + tail)


# --- family 2: mutated valid messages -----------------------------------------------------------

HEADS = [b"\x1f", b"\x3f", b"\x5f", b"\x7f", b"\x9f", b"\xbf", b"\xff", b"\xfc",
         b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff", b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff",
         b"\xbb\x7f\xff\xff\xff\xff\xff\xff\xff", b"\x7a\xff\xff\xff\xff", b"\xd2", b"\xc0",
         b"\xf8\x00", b"\xf9\x7e\x00", b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff", b"\x80", b"\xa0"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    msg = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.integers(0, 6))
        i = draw(st.integers(0, len(msg)))
        if kind == 0 and msg:  # flip bits of one byte
            i = min(i, len(msg) - 1)
            msg[i] ^= draw(st.integers(1, 255))
        elif kind == 1:  # insert random bytes
            msg[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif kind == 2:  # delete a range
            msg[i:i + draw(st.integers(1, 16))] = b""
        elif kind == 3:  # truncate
            del msg[i:]
        elif kind == 4:  # splice in a CBOR head (huge lengths, indefinite, breaks, tags)
            msg[i:i] = draw(st.sampled_from(HEADS))
        elif kind == 5 and msg:  # overwrite one byte with a head byte
            msg[min(i, len(msg) - 1)] = draw(st.sampled_from(HEADS))[0]
        else:  # duplicate a range
            j = draw(st.integers(i, min(len(msg), i + 64)))
            msg[j:j] = msg[i:j]
    return bytes(msg)


@FUZZ
@given(mutated())
def test_mutated_valid_messages(msg: bytes) -> None:
    run(msg)


# --- family 3: structured CBOR, with a reference oracle -----------------------------------------

scalars = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.binary(max_size=40),
    st.text(max_size=12),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
)
# Only tag numbers that cbor2 has no meaning for: it turns some (bignums, dates, sets) into other
# Python types, which would make the oracle disagree about the shape, not about the rules.
tag_numbers = st.one_of(st.sampled_from([16, 17, 19, 96, 97, 98]), st.integers(60000, 2**32))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers(-3, 5)), inner, max_size=4),
        st.builds(cbor2.CBORTag, tag_numbers, inner),
    ),
    max_leaves=8,
)


def maybe(draw: st.DrawFn, good: Any, bad: st.SearchStrategy[Any], p: int = 4) -> Any:
    """`good` most of the time, a random value about one time in p."""
    return draw(bad) if rare(draw, p) else good


def rare(draw: st.DrawFn, p: int) -> bool:
    """True about one time in p. (Hypothesis favours 0 when it draws integers, so 0 is the
    common case here.)"""
    return draw(st.integers(0, p - 1)) == p - 1


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    dev = maybe(draw, "dev-01", st.sampled_from(["d", "x" * 64, "x" * 65, "é", "", "a/b"]), 3)
    kid: Any = dev.encode()
    hdr: Any = {1: maybe(draw, -7, st.sampled_from([-8, -35, 7, "-7", -7.0])),
                4: maybe(draw, kid, values)}
    if rare(draw, 6):
        hdr[draw(st.integers(-3, 40))] = draw(values)
    if rare(draw, 8):
        del hdr[draw(st.sampled_from([1, 4]))]
    protected = maybe(draw, cbor2.dumps(hdr), values, 8)
    fields: dict[Any, Any] = {
        "v": maybe(draw, 1, st.sampled_from([0, 2, 1.0, True, "1"]), 8),
        "dev": maybe(draw, maybe(draw, dev, st.sampled_from(["dev-02", "DEV-01"]), 6), values, 8),
        "seq": maybe(draw, draw(st.integers(0, 2**63 - 1)), values, 8),
        "prev": maybe(draw, ZERO, st.one_of(st.binary(max_size=40), values), 8),
        "data": maybe(draw, draw(st.dictionaries(st.text(max_size=5), st.one_of(
            st.integers(-(2**64), 2**64 - 1), st.floats()), max_size=4)), values, 8),
    }
    if draw(st.booleans()):
        fields["ts"] = maybe(draw, draw(st.integers(0, 2**40)), values, 6)
    for _ in range(draw(st.integers(0, 2))):
        fields[draw(st.one_of(st.text(max_size=6), st.integers(-2, 2)))] = draw(values)
    for name in draw(st.lists(st.sampled_from(["v", "dev", "seq", "prev", "data"]), max_size=1)):
        fields.pop(name, None)
    payload = maybe(draw, cbor2.dumps(fields), values, 10)
    sig = maybe(draw, bytes(64), st.one_of(st.binary(max_size=70), values), 8)
    unprotected = maybe(draw, {}, values, 10)
    elements: Any = [protected, unprotected, payload, sig]
    if rare(draw, 16):
        elements = draw(st.lists(values, max_size=5))
    outer: Any = cbor2.CBORTag(18, elements)
    if rare(draw, 16):
        outer = draw(st.one_of(values, st.builds(cbor2.CBORTag, tag_numbers, st.just(elements))))
    return cbor2.dumps(outer, canonical=draw(st.booleans()))


def depth(v: Any) -> int:
    if isinstance(v, list):
        return 1 + max((depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((max(depth(k), depth(x)) for k, x in v.items()), default=0)
    if isinstance(v, cbor2.CBORTag):
        return 1 + depth(v.value)
    return 0


def is_number(v: Any) -> bool:
    return type(v) is int or type(v) is float


def reference_accepts(msg: bytes) -> bool:
    """The rules of docs/protocol.md, checked on cbor2's decoding (slow, plain, independent)."""
    if len(msg) > MAX_MESSAGE:
        return False
    outer = cbor2.loads(msg)
    if not (isinstance(outer, cbor2.CBORTag) and outer.tag == 18):
        return False
    el = outer.value
    if not (isinstance(el, list) and len(el) == 4):
        return False
    protected, unprotected, payload, sig = el
    if not (type(protected) is bytes and unprotected == {} and type(unprotected) is dict
            and type(payload) is bytes and type(sig) is bytes and len(sig) == 64):
        return False
    try:
        hdr = cbor2.loads(protected)
        fields = cbor2.loads(payload)
    except Exception:
        return False
    if not (type(hdr) is dict and set(hdr) == {1, 4} and all(type(k) is int for k in hdr)):
        return False
    alg, kid = hdr[1], hdr[4]
    if not (type(alg) is int and alg == -7 and type(kid) is bytes and 0 < len(kid) <= 64):
        return False
    try:
        dev = kid.decode()
    except UnicodeDecodeError:
        return False
    if not (type(fields) is dict and all(type(k) is str for k in fields)):
        return False
    if any(name not in fields for name in ("v", "dev", "seq", "prev", "data")):
        return False
    data, ts = fields["data"], fields.get("ts", 0)
    return (
        type(fields["v"]) is int and fields["v"] == 1
        and fields["dev"] == dev and type(fields["dev"]) is str
        and type(fields["seq"]) is int and 0 <= fields["seq"] < 2**63
        and type(fields["prev"]) is bytes and len(fields["prev"]) == 32
        and type(ts) is int
        and type(data) is dict and all(type(k) is str and is_number(v) for k, v in data.items())
    )


@FUZZ
@given(structured())
def test_structured_cbor_agrees_with_the_reference(msg: bytes) -> None:
    # Keep to inputs whose nesting is far from the depth limit: how deep "too deep" starts is
    # the decoder's own choice (tested below), not a rule the reference can restate.
    assume(depth(cbor2.loads(msg)) <= 3
           and all(depth(cbor2.loads(b)) <= 3 for b in _inner_bstrs(msg)))
    got = run(msg)
    want = reference_accepts(msg)
    assert isinstance(got, Decoded) == want, f"decoder: {got!r}, reference: {want}, {msg.hex()}"


def _inner_bstrs(msg: bytes) -> list[bytes]:
    """The protected header and payload byte strings, when they decode as CBOR."""
    outer = cbor2.loads(msg)
    out = []
    if isinstance(outer, cbor2.CBORTag) and isinstance(outer.value, list):
        for b in outer.value[::2][:2]:
            if type(b) is bytes:
                try:
                    cbor2.loads(b)
                    out.append(b)
                except Exception:
                    pass
    return out


# --- crafted worst cases --------------------------------------------------------------------------


def _nest(levels: int, opener: bytes = b"\x81", leaf: bytes = b"\x00") -> bytes:
    return opener * levels + leaf


@pytest.mark.parametrize("opener", [b"\x81", b"\xa1\x00", b"\xd9\x03\xe8"])
def test_deep_nesting_is_refused_by_name(opener: bytes) -> None:
    for levels in (MAX_DEPTH - 2, MAX_DEPTH + 4, 300, 1000):
        junk = _nest(levels, opener)
        msg = message(extra={"x": cbor2.CBORSimpleValue(0)})
        # Swap the unknown field's value for the nested item (lengths fixed up by re-encoding).
        payload = cbor2.dumps({"v": 1, "dev": "dev-01", "seq": 1, "prev": ZERO, "data": {}},
                              canonical=True)
        payload = bytes([payload[0] + 1]) + payload[1:] + b"\x61x" + junk
        protected = cbor2.dumps({1: -7, 4: b"dev-01"})
        msg = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, bytes(64)]))
        if len(msg) > MAX_MESSAGE:
            assert run(msg).reason == "too_large"  # type: ignore[union-attr]
        elif levels > MAX_DEPTH:
            got = run(msg)
            assert isinstance(got, Rejection) and got.reason == "too_deep", got
        else:
            assert isinstance(run(msg), Decoded)


def test_worst_case_shapes_are_fast() -> None:
    """Inputs built to make a parser work hard: all rejected by name within the time bound."""
    n = MAX_MESSAGE - 16
    shapes = [
        b"\xd2\x84" + b"\x9b" + b"\xff" * 8,  # array claiming 2**64 items
        b"\xd2\x84\x40\xbb" + b"\x7f" + b"\xff" * 7 + b"\x00" * n,  # huge map, little data
        b"\xd2\x84\x40\xa0\x59\x07\xc0" + b"\x80" * 1984 + bytes(66),  # payload of empty arrays
        b"\xd2\x84\x40\xa0\x59\x07\xc0\xb9\x03\xe0" + b"\xa0" * 1981 + bytes(66),
        b"\xd2\x84" + b"\x81" * n,  # deep nesting in the outer array
        b"\xd2" * n,  # a chain of tags
        bytes(n),
        b"\xff" * n,
    ]
    for msg in shapes:
        assert len(msg) <= MAX_MESSAGE + 64
        got = run(msg)
        assert isinstance(got, Rejection), msg[:16].hex()
    assert run(b"\x00" * (MAX_MESSAGE + 1)).reason == "too_large"  # type: ignore[union-attr]
