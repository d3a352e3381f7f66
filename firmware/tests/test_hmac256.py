# HMAC-SHA-256 known answers: RFC 4231 section 4, test cases 1-4, 6 and 7 (test case 5 is a
# truncated MAC). Expected values copied from the RFC.
# Run: micropython firmware/tests/test_hmac256.py [test_name ...]

import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path.insert(0, _here + "/..")
sys.path.insert(0, _here)

import runner
from runner import h

from anchor.hmac256 import Hmac256, hmac_sha256

_LONG_KEY = b"\xaa" * 131


def test_rfc4231_case1():
    assert hmac_sha256(b"\x0b" * 20, b"Hi There") == h(
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")


def test_rfc4231_case2():
    assert hmac_sha256(b"Jefe", b"what do ya want for nothing?") == h(
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


def test_rfc4231_case3():
    assert hmac_sha256(b"\xaa" * 20, b"\xdd" * 50) == h(
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe")


def test_rfc4231_case4():
    assert hmac_sha256(bytes(range(1, 26)), b"\xcd" * 50) == h(
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b")


def test_rfc4231_case6_key_longer_than_block():
    msg = b"Test Using Larger Than Block-Size Key - Hash Key First"
    assert hmac_sha256(_LONG_KEY, msg) == h(
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")


def test_rfc4231_case7_long_key_and_data():
    msg = (b"This is a test using a larger than block-size key and a larger than block-size "
           b"data. The key needs to be hashed before being used by the HMAC algorithm.")
    assert hmac_sha256(_LONG_KEY, msg) == h(
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2")


def test_parts_are_concatenated_and_object_is_reusable():
    mac = Hmac256(b"Jefe")
    want = h("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    assert mac.digest(b"what do ya ", b"want for ", b"nothing?") == want
    assert mac.digest(b"what do ya want for nothing?") == want
    assert mac.digest(b"") != want


runner.main(globals())
