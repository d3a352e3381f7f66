# ECDSA P-256 tests under MicroPython: RFC 6979 known answers, the comb against the slow
# reference, edge cases of the point formulas, verification failures, and HMAC-SHA-256 (what
# RFC 6979 is built on).
# Run: micropython firmware/tests/test_p256.py [test_name ...]
#
# Where the expected values come from:
#   - RFC 6979 appendix A.2.5 (P-256, SHA-256): private key, public key, k, r and s for the
#     messages "sample" and "test", copied from the RFC. The RFC's s values are before low-S
#     normalisation; "sample" has a high s, so sign() must return n - s for it.
#   - 2G and 3G: the SEC 2 / NIST P-256 known multiples, re-checked with python-ecdsa
#     (NIST256p.generator * k) when this file was written.
#   - HMAC-SHA-256: RFC 4231 section 4, test cases 1-4, 6 and 7 (test case 5 is a truncated
#     MAC), copied from the RFC.
#   - everything else is checked against firmware/tests/p256_ref.py (textbook affine formulas).
# The CPython cross-checks (tests/firmware/test_crosscheck.py) compare with python-ecdsa and
# cryptography on hundreds of random keys.

import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path.insert(0, _here + "/..")
sys.path.insert(0, _here)

from hashlib import sha256

import p256_ref
import runner
from runner import h, raises

from anchor import p256
from anchor.p256 import hmac_sha256
from anchor.p256_keys import affine, generate_secret, madd, public_key, secret_from_bytes
from anchor.p256_verify import add, decode_point, mul, on_curve, verify

N = p256.N
X_A25 = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
UX_A25 = 0x60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6
UY_A25 = 0x7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299


_LONG_KEY = b"\xaa" * 131


def affine_g(k):
    return affine(*p256.mul_g(k))


def rfc6979_k(d, digest):
    return next(p256.nonces(d, digest))


def test_rfc6979_a25_public_key():
    pub = public_key(X_A25)
    assert pub == b"\x04" + UX_A25.to_bytes(32, "big") + UY_A25.to_bytes(32, "big")


def test_rfc6979_a25_sample():
    d = sha256(b"sample").digest()
    assert rfc6979_k(X_A25, d) == 0xA6E3C57DD01ABE90086538398355DD4C3B17AA873382B0F24D6129493D8AAD60
    r, s = p256.sign_rs(X_A25, d)
    assert r == 0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716
    assert s == 0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8
    # s > n/2: the low-S signature carries n - s.
    sig = p256.sign(X_A25, d)
    assert sig == r.to_bytes(32, "big") + (N - s).to_bytes(32, "big")
    assert verify(public_key(X_A25), d, sig)
    assert verify(public_key(X_A25), d, r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def test_rfc6979_a25_test():
    d = sha256(b"test").digest()
    assert rfc6979_k(X_A25, d) == 0xD16B6AE827F17175E040871A1C7EC3500192C4C92677336EC2537ACAEE0008E0
    r, s = p256.sign_rs(X_A25, d)
    assert r == 0xF1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367
    assert s == 0x019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083
    assert p256.sign(X_A25, d) == r.to_bytes(32, "big") + s.to_bytes(32, "big")  # already low


def test_known_multiples():
    assert affine_g(1) == (p256.GX, p256.GY)
    assert affine_g(2) == (
        0x7CF27B188D034F7E8A52380304B51AC3C08969E277F21B35A60B48FC47669978,
        0x07775510DB8ED040293D9AC69F7430DBBA7DADE63CE982299E04B79D227873D1)
    assert affine_g(3) == (
        0x5ECBE4D1A6330A44C8F7EF951D4BF165E6C6B721EFADA985FB41661BC6E7FD6C,
        0x8734640C4998FF7E374B06CE1A64A2ECD82AB036384FB83D9A79B127A27D5032)
    assert affine_g(N - 1) == (p256.GX, p256.P - p256.GY)
    assert p256.mul_g(N)[2] == 0  # n*G is the point at infinity
    assert p256.mul_g(0)[2] == 0


def test_comb_matches_reference_on_edge_scalars():
    D = p256.COMB_SPACING
    ks = [1, 2, 3, 15, 16, 17, 255, 256, (1 << D) - 1, 1 << D, (1 << D) + 1, 1 << (2 * D),
          (1 << ((p256.COMB_TEETH - 1) * D)) + 1, 1 << 255, (1 << 255) - 1, N - 1, N - 2,
          N >> 1, (N >> 1) + 1,
          0x5555555555555555555555555555555555555555555555555555555555555555,
          0xAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA]
    for k in ks:
        assert affine_g(k) == p256_ref.affine_mul(k, p256.GX, p256.GY), hex(k)


def test_comb_and_double_and_add_agree_on_random_scalars():
    import os

    for _ in range(20):
        k = int.from_bytes(os.urandom(32), "big") % N
        ref = affine(*p256_ref.mul_g_double_add(k))
        assert affine_g(k) == ref


def test_variable_base_mul_matches_reference():
    x, y = affine_g(0x1234567)
    for k in (1, 2, 3, 16, 0xDEADBEEF, N - 1, X_A25):
        got = affine(*mul(k, x, y))
        assert got == p256_ref.affine_mul(k, x, y), hex(k)


def test_table_points_are_on_the_curve():
    t = p256.table()
    assert len(t) == 64 * ((1 << p256.COMB_TEETH) - 1)
    for i in range(0, len(t), 64):
        x = int.from_bytes(t[i : i + 32], "big")
        y = int.from_bytes(t[i + 32 : i + 64], "big")
        assert on_curve(x, y), i // 64


def test_addition_edge_cases():
    g2 = affine_g(2)
    X, Y, Z = p256.mul_g(1)
    # P + P through mixed and full addition must double.
    assert affine(*madd(X, Y, Z, p256.GX, p256.GY)) == g2
    assert affine(*add(X, Y, Z, X, Y, Z)) == g2
    # P + (-P) is infinity.
    assert madd(X, Y, Z, p256.GX, p256.P - p256.GY)[2] == 0
    assert add(X, Y, Z, p256.GX, p256.P - p256.GY, 1)[2] == 0
    # Infinity is the identity; doubling infinity stays infinity.
    assert affine(*madd(1, 1, 0, p256.GX, p256.GY)) == (p256.GX, p256.GY)
    assert affine(*add(1, 1, 0, X, Y, Z)) == (p256.GX, p256.GY)
    assert p256.dbl(1, 1, 0)[2] == 0
    # A non-normalised Jacobian input (Z != 1) gives the same affine result.
    Xs, Ys, Zs = p256.dbl(*p256.dbl(X, Y, Z))  # 4G with Z != 1
    assert Zs != 1
    assert affine(*madd(Xs, Ys, Zs, p256.GX, p256.GY)) == affine_g(5)


def test_inverse():
    for a in (1, 2, 3, p256.P - 1, 0x1234567890ABCDEF):
        assert a * p256.inverse(a, p256.P) % p256.P == 1
        assert a * p256.inverse(a, N) % N == 1
    assert raises(ValueError, p256.inverse, 0, N)


def test_signatures_are_low_s_and_verify():
    import os

    d = generate_secret()
    pub = public_key(d)
    for i in range(30):
        digest = sha256(os.urandom(8) + bytes([i])).digest()
        sig = p256.sign(d, digest)
        assert len(sig) == 64
        assert int.from_bytes(sig[32:], "big") <= p256.HALF_N
        assert verify(pub, digest, sig)


def test_deterministic():
    d = sha256(b"same").digest()
    assert p256.sign(X_A25, d) == p256.sign(X_A25, d)
    assert p256.sign(X_A25, d) != p256.sign(X_A25 + 1, d)


def test_verify_rejects():
    d = sha256(b"sample").digest()
    pub = public_key(X_A25)
    sig = p256.sign(X_A25, d)
    r = sig[:32]
    s = sig[32:]
    assert not verify(pub, sha256(b"sample!").digest(), sig)
    assert not verify(public_key(X_A25 + 1), d, sig)
    bad = bytearray(sig)
    bad[5] ^= 1
    assert not verify(pub, d, bytes(bad))
    assert not verify(pub, d, bytes(32) + s)  # r = 0
    assert not verify(pub, d, r + bytes(32))  # s = 0
    assert not verify(pub, d, r + N.to_bytes(32, "big"))  # s = n
    assert not verify(pub, d, N.to_bytes(32, "big") + s)  # r = n
    assert not verify(pub, d, sig[:63])
    off = bytearray(pub)
    off[64] ^= 1  # not on the curve
    assert not verify(bytes(off), d, sig)
    assert not verify(b"\x02" + pub[1:33], d, sig)  # compressed points are not accepted


def test_secret_validation_and_generation():
    assert raises(ValueError, secret_from_bytes, bytes(32))
    assert raises(ValueError, secret_from_bytes, N.to_bytes(32, "big"))
    assert raises(ValueError, secret_from_bytes, b"\xff" * 32)
    assert raises(ValueError, secret_from_bytes, b"\x01" * 31)
    assert secret_from_bytes((N - 1).to_bytes(32, "big")) == N - 1
    seen = set()
    for _ in range(5):
        d = generate_secret()
        assert 0 < d < N
        seen.add(d)
    assert len(seen) == 5


def test_decode_point():
    pub = public_key(X_A25)
    assert decode_point(pub) == (UX_A25, UY_A25)
    assert raises(ValueError, decode_point, pub[:64])
    assert raises(ValueError, decode_point, b"\x04" + bytes(64))


def test_hmac_rfc4231_case1():
    assert hmac_sha256(b"\x0b" * 20, b"Hi There") == h(
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")


def test_hmac_rfc4231_case2():
    assert hmac_sha256(b"Jefe", b"what do ya want for nothing?") == h(
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


def test_hmac_rfc4231_case3():
    assert hmac_sha256(b"\xaa" * 20, b"\xdd" * 50) == h(
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe")


def test_hmac_rfc4231_case4():
    assert hmac_sha256(bytes(range(1, 26)), b"\xcd" * 50) == h(
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b")


def test_hmac_rfc4231_case6_key_longer_than_block():
    msg = b"Test Using Larger Than Block-Size Key - Hash Key First"
    assert hmac_sha256(_LONG_KEY, msg) == h(
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")


def test_hmac_rfc4231_case7_long_key_and_data():
    msg = (b"This is a test using a larger than block-size key and a larger than block-size "
           b"data. The key needs to be hashed before being used by the HMAC algorithm.")
    assert hmac_sha256(_LONG_KEY, msg) == h(
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2")


def test_hmac_parts_are_concatenated():
    want = h("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    assert hmac_sha256(b"Jefe", b"what do ya ", b"want for ", b"nothing?") == want
    assert hmac_sha256(b"Jefe", b"what do ya want for nothing?") == want
    assert hmac_sha256(b"Jefe", b"") != want


runner.main(globals())
