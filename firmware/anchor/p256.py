# ECDSA over NIST P-256 (secp256r1) with SHA-256, in pure MicroPython: signing, what the device
# loop runs for every reading.
#
#   sign(d, digest) -> bytes              64-byte r || s, RFC 6979 nonce, low-S (s <= n/2)
#   sign_rs(d, digest) -> (r, s)          the signature before low-S normalisation
#   nonces(d, digest)                     the RFC 6979 nonce candidates, in order (a generator)
#   hmac_sha256(key, *parts) -> bytes     HMAC-SHA-256 (RFC 2104), what RFC 6979 is built on
#   mul_g(k), dbl(X, Y, Z), inverse(a, m) the arithmetic signing needs (Jacobian points)
# Its cold companions (COLD below), imported where they are used:
#   p256_keys.py    keys (generate_secret, secret_from_bytes, public_key) and filling the comb
#                   table: start-up code, dropped by the device loop once it has started
#   p256_verify.py  ECDSA verification and arbitrary-point arithmetic: a device never runs it
#
# Speed. Field elements are plain ints reduced with `%` (one C call; a hand-written Solinas
# reduction is slower in bytecode). Points are in Jacobian coordinates (X/Z^2, Y/Z^3), doubled
# with the a = -3 formula (dbl-2001-b) and added to affine points with mixed addition, so no
# inversion happens until the end. k*G uses a fixed-base comb (Lim-Lee, one table): _W teeth
# spaced _D = ceil(256/_W) bits apart; table[i] = sum of 2^(t*_D)*G over the bits t of i. A
# multiplication is then _D-1 doublings and at most _D mixed additions instead of 255 doublings
# and ~128 additions. The table is one bytearray of affine coordinates (64 bytes a point),
# allocated at import and filled on first use (p256_keys.fill_table). Inversions use the extended
# Euclidean algorithm in bytecode, which on MicroPython is ~5x faster than pow(a, m - 2, m)
# (67 us against 354 us on this PC).
#
# Measured on the Unix port (x86-64, MicroPython 1.25; tools/bench_firmware.py): about 1.5 ms
# per signature against 4 ms for plain double-and-add (ratio ~0.36), about 5 KB peak heap during
# one signature (64-bit objects). The comb sweep is above _W below.
#
# Not constant-time: MicroPython's big integers are variable-time and the comb skips zero
# columns. The threat model is a device that signs its own sensor data; a local timing or power
# side channel is out of scope (see docs/protocol.md).

from hashlib import sha256

from micropython import const

P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5
HALF_N = N >> 1

# Comb width: a table of 2^_W - 1 points, 64 bytes each. Measured on the Unix port (x86-64,
# MicroPython 1.25), median ms per whole signature (RFC 6979 nonce, k*G, inversions, low-S),
# against 3.9 ms for plain double-and-add in the same runs:
#   _W = 4:  1.47 ms,    960-byte table, built in  3.5 ms   <- chosen
#   _W = 5:  1.23 ms,  1 984 bytes,              5.5 ms
#   _W = 6:  1.06 ms,  4 032 bytes,              7.7 ms
#   _W = 7:  0.92 ms,  8 128 bytes,             13.8 ms
#   _W = 8:  0.82 ms, 16 320 bytes,             23.0 ms
# Each tooth more doubles the RAM for about 13% less time. 4 teeth: the device loop has to fit in
# a small heap (issue 5: 48 KiB is the goal; docs/boards.md, "Memory"), where 1 KB matters more
# than 0.25 ms per reading, and the ratio to double-and-add stays under 0.4 (0.36 measured).
# An ESP32 at 240 MHz is roughly 20-50x slower than this PC (an estimate, not measured here):
# ~20-50 ms per signature, ~0.2-0.4 s to build the table once (at start-up, in Device.load).
_W = const(4)
_D = const(64)  # ceil(256 / _W)
COMB_TEETH = _W  # public copies: const names with a leading underscore are inlined away
COMB_SPACING = _D
COLD = ("p256_keys", "p256_verify")

# The comb table: affine (x, y) of table[i] at offset 64 * (i - 1), 32 bytes each, big-endian.
# The buffer is allocated at import, while the heap is still unfragmented (a 2 KB block can be
# hard to find later in a small heap), and filled on first use.
_table = bytearray(64 * ((1 << _W) - 1))
_table_ready = False


def inverse(a, m):
    """a^-1 mod m for 0 < a < m and m prime (extended Euclid; variable-time)."""
    x0 = 0
    x1 = 1
    b = m
    while a > 1:
        q = b // a
        b, a = a, b - q * a
        x0, x1 = x1, x0 - q * x1
    if a != 1:
        raise ValueError("not invertible")
    return x1 % m


# ---- point arithmetic (Jacobian coordinates; Z = 0 is the point at infinity) ----


def dbl(X, Y, Z):
    """2 * (X:Y:Z) (dbl-2001-b, a = -3); infinity (Z = 0) stays infinity."""
    p = P
    if not Z:
        return X, Y, 0
    delta = Z * Z % p
    gamma = Y * Y % p
    beta = X * gamma % p
    alpha = 3 * (X - delta) * (X + delta) % p
    X3 = (alpha * alpha - 8 * beta) % p
    return X3, (alpha * (4 * beta - X3) - 8 * gamma * gamma) % p, (Y + Y) * Z % p


# ---- fixed-base comb for k*G ----


def table():
    """The comb table (a bytearray of 64 * (2^_W - 1) bytes), filled on first use."""
    global _table_ready
    if not _table_ready:
        from anchor.p256_keys import fill_table  # once, at start-up (Device.load)

        fill_table(_table)
        _table_ready = True
    return _table


def mul_g(k):
    """k*G in Jacobian coordinates, for 0 <= k < 2^(_W * _D)."""
    t = memoryview(table())
    p = P
    frm = int.from_bytes
    kb = k.to_bytes(33, "little")  # _W * _D <= 264 bits
    X = Y = 1
    Z = 0
    # Few names for the temporaries (a, b, c, e), reused by the doubling and the addition: each
    # name holds a big integer until it is assigned again, so fewer names means less heap while
    # signing (the device loop's peak).
    for j in range(_D - 1, -1, -1):
        # Double (dbl-2001-b, inline; Z = 0 stays 0): a = delta, b = gamma, c = beta,
        # e = alpha.
        if Z:
            a = Z * Z % p
            b = Y * Y % p
            c = X * b % p
            e = 3 * (X - a) * (X + a) % p
            Z = (Y + Y) * Z % p
            X = (e * e - 8 * c) % p
            Y = (e * (4 * c - X) - 8 * b * b) % p
        # Column j: bit j of each of the _W teeth.
        idx = 0
        i = j + (_W - 1) * _D
        while i >= 0:
            idx = (idx << 1) | ((kb[i >> 3] >> (i & 7)) & 1)
            i -= _D
        if not idx:
            continue
        o = 64 * (idx - 1)
        a = frm(t[o : o + 32], "big")       # the table point (a, b)
        b = frm(t[o + 32 : o + 64], "big")
        if not Z:
            X = a
            Y = b
            Z = 1
            continue
        # Mixed addition (madd-2007-bl, inline): c = Z^2, e = R, then c = H.
        c = Z * Z % p
        e = b * (Z * c % p) % p - Y
        c = a * c % p - X
        if not c:
            X, Y, Z = dbl(a, b, 1) if not e else (1, 1, 0)
            continue
        a = c * c % p       # HH
        b = c * a % p       # HHH
        Z = Z * c % p
        c = X * a % p       # V
        X = (e * e - b - c - c) % p
        Y = (e * (c - X) - Y * b) % p
    return X, Y, Z



# ---- ECDSA ----


def hmac_sha256(key, *parts):
    """HMAC-SHA-256 (RFC 2104) of the concatenated parts, what RFC 6979 needs. Here, not in a
    module of its own: a module costs the device loop RAM (a few hundred bytes). MicroPython's
    sha256 objects have no copy(), so both padded keys are hashed again for every MAC."""
    if len(key) > 64:
        key = sha256(key).digest()
    k = bytearray(64)
    k[: len(key)] = key
    for i in range(64):
        k[i] ^= 0x36
    h = sha256(k)
    for p in parts:
        h.update(p)
    inner = h.digest()
    for i in range(64):
        k[i] ^= 0x36 ^ 0x5C
    h = sha256(k)
    h.update(inner)
    return h.digest()


def nonces(d, digest):
    """The RFC 6979 (section 3.2) nonces for private key d and a 32-byte digest, in the order
    signing tries them. qlen = hlen = 256, so bits2int is a plain big-endian conversion and
    bits2octets(h1) = (h1 mod n) as 32 bytes."""
    x = d.to_bytes(32, "big")
    h = (int.from_bytes(digest, "big") % N).to_bytes(32, "big")
    mac = hmac_sha256
    V = b"\x01" * 32
    K = mac(b"\x00" * 32, V, b"\x00", x, h)
    V = mac(K, V)
    K = mac(K, V, b"\x01", x, h)
    # Between the yields only K and V stay (no x or h): the generator is alive while k*G is
    # computed, the peak of the signing heap.
    x = h = None
    V = mac(K, V)
    while True:
        V = mac(K, V)
        k = int.from_bytes(V, "big")
        if 0 < k < N:
            yield k
        K = mac(K, V, b"\x00")
        V = mac(K, V)



def sign_rs(d, digest, mul_base=None):
    """ECDSA (r, s) before low-S normalisation. digest: 32 bytes (SHA-256).

    mul_base(k) -> Jacobian k*G; the comb by default (the bench passes a reference).
    """
    mul_base = mul_base or mul_g
    e = int.from_bytes(digest, "big")
    n = N
    for k in nonces(d, digest):
        X, Y, Z = mul_base(k)
        zi = inverse(Z, P)
        r = X * zi * zi % P % n
        if not r:
            continue
        s = inverse(k, n) * (e + r * d) % n
        if s:
            return r, s


def sign(d, digest, mul_base=None):
    """64-byte ES256 signature r || s of a 32-byte SHA-256 digest, with s <= n/2."""
    r, s = sign_rs(d, digest, mul_base)
    if s > HALF_N:
        s = N - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")

