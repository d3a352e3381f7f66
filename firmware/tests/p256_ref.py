# Slow reference P-256 arithmetic, only to check and to measure the fast code in anchor/p256.py.
# Not shipped to devices.
#
#   affine_mul(k, x, y) -> (x, y) | None   textbook affine double-and-add: one inversion per step
#                                          (independent formulas, for checking a few scalars)
#   mul_g_double_add(k) -> (X, Y, Z)      left-to-right double-and-add on G in Jacobian
#                                          coordinates with mixed addition: the plain baseline
#                                          that tools/bench_firmware.py compares the comb with
#
# Both are written from the textbook formulas again rather than calling anchor.p256's helpers,
# so a slip in one does not hide in the other.

P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5


def _inv(a):
    return pow(a, P - 2, P)


def affine_add(p1, p2):
    """Affine addition with None as the point at infinity (y^2 = x^3 - 3x + b)."""
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    x1, y1 = p1
    x2, y2 = p2
    if x1 == x2:
        if (y1 + y2) % P == 0:
            return None
        lam = (3 * x1 * x1 - 3) * _inv(2 * y1) % P
    else:
        lam = (y2 - y1) * _inv(x2 - x1) % P
    x3 = (lam * lam - x1 - x2) % P
    return x3, (lam * (x1 - x3) - y1) % P


def affine_mul(k, x, y):
    acc = None
    pt = (x, y)
    while k:
        if k & 1:
            acc = affine_add(acc, pt)
        pt = affine_add(pt, pt)
        k >>= 1
    return acc


def mul_g_double_add(k):
    """k*G, 0 < k < 2^256, as Jacobian (X, Y, Z): 1 doubling per bit, 1 addition per set bit."""
    p = P
    gx = GX
    gy = GY
    X = Y = 1
    Z = 0
    for byte in k.to_bytes(32, "big"):
        for sh in (7, 6, 5, 4, 3, 2, 1, 0):
            if Z:
                # dbl-2001-b, a = -3
                d = Z * Z % p
                g = Y * Y % p
                be = X * g % p
                al = 3 * (X - d) * (X + d) % p
                Z = 2 * Y * Z % p
                X = (al * al - 8 * be) % p
                Y = (al * (4 * be - X) - 8 * g * g) % p
            if (byte >> sh) & 1:
                if not Z:
                    X, Y, Z = gx, gy, 1
                    continue
                # madd: (X:Y:Z) + (gx, gy)
                zz = Z * Z % p
                u2 = gx * zz % p
                s2 = gy * Z * zz % p
                h = u2 - X
                r = s2 - Y
                if not h:
                    raise ValueError("reference: doubling case in addition (k too special)")
                hh = h * h % p
                hhh = h * hh % p
                v = X * hh % p
                Z = Z * h % p
                X = (r * r - hhh - 2 * v) % p
                Y = (r * (v - X) - Y * hhh) % p
    return X, Y, Z
