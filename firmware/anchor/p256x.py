# The parts of the P-256 code that a device never runs: key generation, ECDSA verification and
# arbitrary-point multiplication, and the RFC 6979 test hooks. They live here so that a board does
# not keep their code in RAM; `anchor.p256` forwards these names (p256.verify, p256.mul, ...) to
# this module on first use, so callers need not know.

import hashlib
import os

from anchor.p256 import N, P, _dbl, _nonces, inverse, mul_g, sign
from anchor.p256key import _affine, _madd

B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B


def mul(k, x, y):
    """k*(x, y) in Jacobian coordinates, any affine point (4-bit fixed window)."""
    # Precompute 1..15 times the point.
    win = [(x, y, 1)]
    for _ in range(14):
        win.append(_madd(*win[-1], x, y))
    X = Y = 1
    Z = 0
    kb = k.to_bytes(32, "big")
    for byte in kb:
        for nib in (byte >> 4, byte & 15):
            for _ in range(4):
                X, Y, Z = _dbl(X, Y, Z)
            if nib:
                X, Y, Z = _add(X, Y, Z, *win[nib - 1])
    return X, Y, Z


def _add(X1, Y1, Z1, X2, Y2, Z2):
    """Full Jacobian addition (used by verification and table building)."""
    p = P
    if not Z1:
        return X2, Y2, Z2
    if not Z2:
        return X1, Y1, Z1
    Z1Z1 = Z1 * Z1 % p
    Z2Z2 = Z2 * Z2 % p
    U1 = X1 * Z2Z2 % p
    S1 = Y1 * (Z2 * Z2Z2 % p) % p
    H = X2 * Z1Z1 % p - U1
    R = Y2 * (Z1 * Z1Z1 % p) % p - S1
    if not H:
        if not R:
            return _dbl(X1, Y1, Z1)
        return 1, 1, 0
    HH = H * H % p
    HHH = H * HH % p
    V = U1 * HH % p
    X3 = (R * R - HHH - V - V) % p
    return X3, (R * (V - X3) - S1 * HHH) % p, Z1 * Z2 % p * H % p


def on_curve(x, y):
    p = P
    return 0 <= x < p and 0 <= y < p and (y * y - x * x * x + 3 * x - B) % p == 0


def decode_point(pub):
    """65-byte uncompressed SEC1 point -> (x, y). ValueError if malformed or not on the curve."""
    if len(pub) != 65 or pub[0] != 4:
        raise ValueError("expected a 65-byte uncompressed SEC1 point")
    x = int.from_bytes(pub[1:33], "big")
    y = int.from_bytes(pub[33:], "big")
    if not on_curve(x, y):
        raise ValueError("point is not on P-256")
    return x, y


def generate_secret():
    """A new private scalar: 32 bytes from os.urandom, redrawn until 1 <= d < n."""
    while True:
        d = int.from_bytes(os.urandom(32), "big")
        if 0 < d < N:
            return d


def rfc6979_k(d, digest):
    """The first RFC 6979 nonce for private key d and a 32-byte digest."""
    for k in _nonces(d, digest):
        return k


def sign_message(d, msg):
    return sign(d, hashlib.sha256(msg).digest())


def verify(pub, digest, sig):
    """True if sig (64 bytes r || s) is a valid ECDSA signature of digest under pub (65 bytes).

    Plain ECDSA: a high-S signature verifies too; callers that want low-S check s themselves.
    """
    try:
        x, y = decode_point(pub)
    except ValueError:
        return False
    if len(sig) != 64:
        return False
    n = N
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if not (0 < r < n and 0 < s < n):
        return False
    e = int.from_bytes(digest, "big")
    w = inverse(s, n)
    X, Y, Z = _add(*mul_g(e * w % n), *mul(r * w % n, x, y))
    if not Z:
        return False
    zi = inverse(Z, P)
    return X * zi * zi % P % n == r
