# P-256 keys, the code a device runs once, at start-up (keygen, first boot, loading its key):
# a new secret, the secret from its 32 bytes, the public key; and filling the comb table that
# p256.mul_g signs with, which the first public key does. A cold companion of p256.py (p256.COLD):
# the device loop drops it once it has started (anchor.unload).

import os

from anchor.p256 import COMB_SPACING, COMB_TEETH, GX, GY, N, P, dbl, inverse, mul_g


def madd(X1, Y1, Z1, x2, y2):
    """(X1:Y1:Z1) + (x2, y2) (madd-2007-bl), the second point affine and not infinity."""
    p = P
    if not Z1:
        return x2, y2, 1
    ZZ = Z1 * Z1 % p
    H = x2 * ZZ % p - X1
    R = y2 * (Z1 * ZZ % p) % p - Y1
    if not H:
        if not R:
            return dbl(x2, y2, 1)
        return 1, 1, 0
    HH = H * H % p
    HHH = H * HH % p
    V = X1 * HH % p
    X3 = (R * R - HHH - V - V) % p
    return X3, (R * (V - X3) - Y1 * HHH) % p, Z1 * H % p


def affine(X, Y, Z):
    """Jacobian -> affine (x, y); None for infinity."""
    if not Z:
        return None
    p = P
    zi = inverse(Z, p)
    zi2 = zi * zi % p
    return X * zi2 % p, Y * zi2 * zi % p


def fill_table(out):
    """Fill `out` (p256.table()'s buffer, 64 bytes a point) with the comb table of p256.mul_g:
    the COMB_TEETH base points 2^(t * COMB_SPACING) * G, then every subset sum, each made from
    an earlier entry plus one base point and stored in affine form straight away, so little
    else stays alive. One inversion per entry (about 65 us each here) is slower than
    Montgomery's batch trick but keeps the peak heap small, which matters more on a board."""
    n = (1 << COMB_TEETH) - 1
    base = [(GX, GY)]
    for _ in range(COMB_TEETH - 1):
        x, y = base[-1]
        X, Y, Z = x, y, 1
        for _ in range(COMB_SPACING):
            X, Y, Z = dbl(X, Y, Z)
        base.append(affine(X, Y, Z))
    top = 0
    for i in range(1, n + 1):
        if i == 2 << top:
            top += 1
        rest = i - (1 << top)
        x, y = base[top]
        if rest:
            o = 64 * (rest - 1)
            X, Y, Z = madd(int.from_bytes(out[o : o + 32], "big"),
                            int.from_bytes(out[o + 32 : o + 64], "big"), 1, x, y)
            x, y = affine(X, Y, Z)
        o = 64 * (i - 1)
        out[o : o + 32] = x.to_bytes(32, "big")
        out[o + 32 : o + 64] = y.to_bytes(32, "big")


def generate_secret():
    """A new private scalar: 32 bytes from os.urandom, redrawn until 1 <= d < n."""
    while True:
        d = int.from_bytes(os.urandom(32), "big")
        if 0 < d < N:
            return d


def secret_from_bytes(b):
    """32 big-endian bytes -> private scalar. ValueError unless 1 <= d < n."""
    if len(b) != 32:
        raise ValueError("a P-256 secret is 32 bytes")
    d = int.from_bytes(b, "big")
    if not 0 < d < N:
        raise ValueError("a P-256 secret must be in [1, n-1]")
    return d


def public_key(d):
    """65-byte uncompressed SEC1 encoding of d*G. Requires 1 <= d < n."""
    x, y = affine(*mul_g(d))
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")
