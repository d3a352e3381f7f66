# ECDSA P-256 verification, with the arithmetic on arbitrary points it needs: what a device
# never runs (it only signs), for tests, tools and a device checking a message. A cold companion
# of p256.py (p256.COLD), so that a board does not keep its code in RAM.

from anchor.p256 import N, P, dbl, inverse, mul_g
from anchor.p256_keys import madd

B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B


def mul(k, x, y):
    """k*(x, y) in Jacobian coordinates, any affine point (4-bit fixed window)."""
    # Precompute 1..15 times the point.
    win = [(x, y, 1)]
    for _ in range(14):
        win.append(madd(*win[-1], x, y))
    X = Y = 1
    Z = 0
    kb = k.to_bytes(32, "big")
    for byte in kb:
        for nib in (byte >> 4, byte & 15):
            for _ in range(4):
                X, Y, Z = dbl(X, Y, Z)
            if nib:
                X, Y, Z = add(X, Y, Z, *win[nib - 1])
    return X, Y, Z


def add(X1, Y1, Z1, X2, Y2, Z2):
    """(X1:Y1:Z1) + (X2:Y2:Z2): full Jacobian addition, either point may be infinity."""
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
            return dbl(X1, Y1, Z1)
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
    X, Y, Z = add(*mul_g(e * w % n), *mul(r * w % n, x, y))
    if not Z:
        return False
    zi = inverse(Z, P)
    return X * zi * zi % P % n == r
