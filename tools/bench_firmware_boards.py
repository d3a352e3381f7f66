#!/usr/bin/env python3
"""Board-sized figures for `make bench-firmware` (sections that tools/bench_firmware.py adds to
its own through SECTIONS and summary() here), and the rig the heap-limit test uses.

  firmware_ram   RAM the loaded firmware takes: gc.mem_alloc() after importing every module the
                 device loop needs (and the comb table they allocate), from .mpy files compiled
                 with mpy-cross as a board runs them; the same from .py sources in the same run,
                 as the baseline, and the ratio; and what stays once the loop has started (its
                 start-up modules dropped again, its board, state, outbox and client built).
  loop_heap      the smallest `micropython -X heapsize` at which the device loop, from .mpy,
                 still produces N readings and gets all of them acknowledged as anchored, end to
                 end through Mosquitto and the gateway service (`iot-anchor run`), found by
                 binary search in 1 KiB steps; the goal is 48 KiB. The baseline in the same run
                 is the same search for `main.py sign` (one reading, no network, no outbox).
  loop_frozen    the same search with the firmware frozen into the binary (a Unix port built
                 with FROZEN_MANIFEST = asyncio + firmware/manifest.py, cached under
                 .cache/micropython-frozen/): the bytecode then stays in the binary, as it stays
                 in flash on a board whose MicroPython is built with the firmware frozen in.

Every section runs twice: on the 32-bit build of the Unix port (.cache/micropython/micropython32,
built by `make setup` with tools/install-micropython --32bit, or $IOT_ANCHOR_MICROPYTHON32),
whose objects and pointers are the size they are on an ESP32 or RP2040, so its figures are the
board's and carry the plain JSON keys (the goal is checked on them); and on the 64-bit binary,
whose objects are larger (pointers, small ints and GC blocks twice the size), keys ending in
_64bit. Without a 32-bit build (not supported on aarch64, say) the plain keys are null. If the
binary given is itself 32-bit, it is the one measured and the _64bit keys are null.

Run alone: `python tools/bench_firmware_boards.py` prints the same lines, then one JSON object;
`--only loop_heap --bits 32` runs one section on one build (repeat --only for more).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.fleet.provision import choose_mpy_cross  # noqa: E402
from gateway.sim.broker import PrivateBroker  # noqa: E402

FIRMWARE = ROOT / "firmware"
GOAL_LOOP_HEAP_KIB = 48
LOOP_READINGS = 20  # per binary-search trial (the heap test runs 50)

_RAM_SCRIPT = """
import gc, sys
sys.path.insert(0, %r)
gc.collect()
m0 = gc.mem_alloc()
from anchor import device, mqtt, outbox, state, cose, cbor, cbor_decode, p256, board
from anchor import config, startup
gc.collect()
print(gc.mem_alloc() - m0)
"""

# What stays in RAM once the device loop has started: its modules, after its start-up dropped the
# start-up-only ones (device.main does the same), and the objects the loop runs on.
_RAM_STARTED = """
import gc, sys
sys.path.insert(0, %r)
gc.collect()
m0 = gc.mem_alloc()
from anchor import device_setup, unload
opts = device_setup.parse_args(["--dir", %r, "--broker", "mqtt://127.0.0.1:1"])
objs = device_setup.build(opts)
device_setup = None
unload()
gc.collect()
print(gc.mem_alloc() - m0)
"""

# RAM per module, each imported after the ones it needs (so it is counted once)
_RAM_BY_MODULE = """
import gc, sys, json
sys.path.insert(0, %r)
out = {}
gc.collect()
prev = gc.mem_alloc()
for m in ('anchor', 'anchor.cbor', 'anchor.cbor_types', 'anchor.cbor_decode', 'anchor.p256',
          'anchor.cose', 'anchor.state', 'anchor.outbox', 'anchor.mqtt', 'anchor.board',
          'anchor.device', 'anchor.config', 'anchor.startup'):
    __import__(m)
    gc.collect()
    a = gc.mem_alloc()
    out[m.split('.')[-1]] = a - prev
    prev = a
print(json.dumps(out))
"""


def micropython() -> str:
    env = os.environ.get("IOT_ANCHOR_MICROPYTHON")
    built = ROOT / ".cache" / "micropython" / "micropython"
    mp = env or (str(built) if built.exists() else shutil.which("micropython"))
    if not mp:
        sys.exit("bench: the MicroPython Unix port is missing: run 'make setup'")
    return mp


def micropython32() -> str | None:
    """The 32-bit build of the Unix port, or None when it is not there."""
    env = os.environ.get("IOT_ANCHOR_MICROPYTHON32")
    built = ROOT / ".cache" / "micropython" / "micropython32"
    return env or (str(built) if built.exists() else None)


def binaries(mp: str) -> tuple[str | None, str | None]:
    """(32-bit, 64-bit) binaries to measure: `mp` by its word size, and the 32-bit build."""
    if word_bits(mp) == 32:
        return mp, None
    mp32 = micropython32()
    if mp32 is not None and (not Path(mp32).is_file() or word_bits(mp32) != 32):
        sys.exit(f"bench: {mp32} is not a 32-bit MicroPython: remove it and run "
                 "'tools/install-micropython --32bit', or fix $IOT_ANCHOR_MICROPYTHON32")
    return mp32, mp


# --bits: only the 32-bit build or only the 64-bit binary (None: both)
_ONLY_BITS: int | None = None

# keys that are settings of the bench, the same on both word sizes: reported once
_SETTINGS = {"loop_heap_goal_kib", "loop_heap_readings"}


def both_word_sizes(fn: Callable[[str], dict[str, Any]]) -> Callable[[str], dict[str, Any]]:
    """The section `fn` on the 32-bit build (plain keys) and on the 64-bit one (keys + _64bit)."""
    def section(mp: str) -> dict[str, Any]:
        mp32, mp64 = binaries(mp)
        if _ONLY_BITS == 32:
            if mp32 is None:
                sys.exit("bench: --bits 32 asked for, but there is no 32-bit MicroPython: run "
                         "'tools/install-micropython --32bit' or set IOT_ANCHOR_MICROPYTHON32")
            mp64 = None
        elif _ONLY_BITS == 64:
            mp32 = None
        r64 = fn(mp64) if mp64 else None
        r32 = fn(mp32) if mp32 else None
        keys = list((r32 or r64 or {}).keys())
        out: dict[str, Any] = {k: (r32 or {}).get(k) for k in keys}
        out.update({f"{k}_64bit": (r64 or {}).get(k) for k in keys if k not in _SETTINGS})
        out.update({k: (r32 or r64 or {})[k] for k in keys if k in _SETTINGS})
        out["micropython32"] = mp32
        return out
    section.__name__ = fn.__name__
    section.__doc__ = fn.__doc__
    return section


def mpy_format(mp: str) -> tuple[int, int]:
    out = subprocess.run([mp, "-c", "import sys; print(sys.implementation._mpy)"],
                         capture_output=True, text=True, check=True).stdout
    v = int(out)
    return v & 0xFF, (v >> 8) & 3


def compile_tree(mp: str, out: Path) -> Path:
    """firmware/ as a board holds it after provisioning, for the Unix port: every anchor/*.py
    (board_unix.py included) compiled to .mpy with the mpy-cross matching `mp`, main.py as
    source. Returns the directory.

    The source name in each .mpy (mpy-cross -s, shown in tracebacks) is the path it is loaded
    from, which is also the module's __file__: the two are then one qstr in RAM instead of two
    (about 25 bytes a module). On a board that path is /lib/anchor/NAME.mpy.

    -O3, as `device provision` compiles (gateway/fleet/provision/compile.py): no line-number
    tables (~1.5 KB less heap for the device loop; a traceback then names the functions, not
    the lines) and no assert statements (the firmware has none)."""
    exe = choose_mpy_cross(mpy_format(mp))
    (out / "anchor").mkdir(parents=True, exist_ok=True)
    for src in sorted((FIRMWARE / "anchor").glob("*.py")):
        dest = (out / "anchor" / (src.stem + ".mpy")).resolve()
        subprocess.run([exe, "-O3", "-o", str(dest), "-s", str(dest), str(src)], check=True,
                       capture_output=True)
    shutil.copy(FIRMWARE / "main.py", out / "main.py")
    return out


# A gateway downlink key for device states that talk to no gateway (the RAM of a started loop):
# the public key of the P-256 secret 0x1234567890abcdef.
EXAMPLE_DOWNLINK_KEY = (
    "049fad84aeae08bbef7f010014d82cef6a09de2b0cf871b5ce0c4f1d13a59a5934"
    "07cb45769f1070e2c2470fe5b1bfe63133c0b0cdc64ea4bf3791a8ec2a07fd4f")


def iot(*args: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"iot-anchor {' '.join(args)}: {p.stderr.strip()}")
    return p


class LoopRig:
    """Mosquitto, a gateway data dir with `devices` pre-registered device keys, and the gateway
    service, for running the device loop from .mpy files under a chosen heap size. Every device
    directory is used once. Use as a context manager: everything it started is stopped."""

    def __init__(self, mp: str, workdir: Path, devices: int) -> None:
        self.mp = mp
        self.dir = workdir
        # The firmware and the device directories under a short path of their own, removed on
        # exit: every module's path is a qstr that stays in RAM (its __file__ and the source
        # name in the .mpy), and so are the command line's words; on a board the modules are
        # /lib/anchor/NAME.mpy and the data directory "data". A path as long as pytest's
        # tmp_path (~70 characters) would cost the loop ~1 KB that a board does not spend.
        self.root = Path(tempfile.mkdtemp(prefix="r", dir="/tmp" if os.path.isdir("/tmp")
                                          else None))
        self.fw = compile_tree(mp, self.root)
        self.broker = PrivateBroker(workdir=workdir / "broker")
        self.data = workdir / "gw"
        self.gateway: subprocess.Popen[bytes] | None = None
        self.free: list[Path] = []
        self.devices = devices

    def __enter__(self) -> LoopRig:
        try:
            self.broker.start()
            iot("init", "--data", str(self.data))
            downlink = iot("downlink", "key", "--data", str(self.data)).stdout.strip()
            for i in range(self.devices):
                d = self.root / f"d{i}"
                p = subprocess.run([self.mp, str(self.fw / "main.py"), "keygen", "--dir", str(d),
                                    "--id", f"heap-{i:02d}", "--downlink-key", downlink],
                                   capture_output=True, text=True, timeout=60, check=True)
                pub = p.stdout.strip().splitlines()[-1]
                iot("device", "add", f"heap-{i:02d}", "--public-key", pub, "--data",
                    str(self.data))
                self.free.append(d)
            log = open(self.dir / "gateway.log", "ab")  # noqa: SIM115 - closed with the process
            self.gateway = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--data", str(self.data), "--broker",
                 self.broker.url, "--batch-interval", "0.2"], stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                start_new_session=True)
            log.close()
            deadline = time.monotonic() + 30
            while "connected to" not in (self.dir / "gateway.log").read_text(errors="replace"):
                if self.gateway.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the gateway service did not start: " +
                                       (self.dir / "gateway.log").read_text()[-2000:])
                time.sleep(0.05)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        g, self.gateway = self.gateway, None
        if g is not None and g.poll() is None:
            os.killpg(g.pid, signal.SIGTERM)
            try:
                g.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(g.pid, signal.SIGKILL)
                g.wait()
        self.broker.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def run_loop(self, heap_kib: int, count: int, timeout: float = 120) -> tuple[bool, dict]:
        """The device loop on a fresh device: (success, its summary JSON or {"error": ...})."""
        d = self.free.pop(0)
        try:
            p = subprocess.run(
                [self.mp, "-X", f"heapsize={heap_kib}k", str(self.fw / "main.py"), "run",
                 "--dir", str(d), "--broker", self.broker.url, "--interval", "0", "--count",
                 str(count), "--timeout", "60", "--ack-timeout", "5"],
                capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, {"error": "timeout"}
        last = (p.stdout.strip().splitlines() or [""])[-1]
        try:
            summary = json.loads(last)
        except ValueError:
            err = (p.stderr.strip().splitlines() or ["no output"])[-1]
            return False, {"error": err}
        return p.returncode == 0 and bool(summary.get("ok")), summary


def smallest_heap(works: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """Smallest k in (lo, hi] with works(k), assuming monotony; None if works(hi) is False."""
    if not works(hi):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if works(mid):
            hi = mid
        else:
            lo = mid
    return hi


# ---------------------------------------------------------------------------- sections


def firmware_ram(mp: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-fw-ram-") as tmp:
        fw = compile_tree(mp, Path(tmp) / "fw")

        def ram(path: Path) -> int:
            p = subprocess.run([mp, "-c", _RAM_SCRIPT % str(path)], capture_output=True,
                               text=True, timeout=60)
            if p.returncode != 0:
                raise RuntimeError(p.stderr)
            return int(p.stdout.strip().splitlines()[-1])

        mpy = ram(fw)
        src = ram(FIRMWARE)
        d = Path(tmp) / "dev"
        subprocess.run([mp, str(fw / "main.py"), "keygen", "--dir", str(d), "--secret", "11" * 32,
                        "--downlink-key", EXAMPLE_DOWNLINK_KEY],
                       capture_output=True, check=True, timeout=60)
        p = subprocess.run([mp, "-c", _RAM_STARTED % (str(fw), str(d))], capture_output=True,
                           text=True, timeout=60)
        started = int(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else None
        p = subprocess.run([mp, "-c", _RAM_BY_MODULE % str(fw)], capture_output=True,
                           text=True, timeout=60)
        by_module = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {}

        def imports_in(path: Path) -> Callable[[int], bool]:
            def works(k: int) -> bool:
                p = subprocess.run([mp, "-X", f"heapsize={k}k", "-c", _RAM_SCRIPT % str(path)],
                                   capture_output=True, text=True, timeout=60)
                return p.returncode == 0
            return works

        # the heap needed to get there: compiling sources on the board costs extra RAM
        imp_mpy = smallest_heap(imports_in(fw), 16, 512)
        imp_src = smallest_heap(imports_in(FIRMWARE), 16, 512)
    return {"firmware_ram_bytes_mpy": mpy, "firmware_ram_bytes_source": src,
            "firmware_ram_bytes_loop_started": started,
            "firmware_ram_bytes_by_module": by_module,
            "firmware_ram_ratio_mpy_source": round(mpy / src, 3),
            "import_heap_kib_mpy": imp_mpy, "import_heap_kib_source": imp_src,
            "import_heap_ratio_mpy_source": round(imp_mpy / imp_src, 2)
            if imp_mpy and imp_src else None}


def loop_heap(mp: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-fw-loop-") as tmp, \
            LoopRig(mp, Path(tmp), devices=10) as rig:
        trials: dict[int, bool] = {}

        def works(k: int) -> bool:
            ok, _summary = rig.run_loop(k, LOOP_READINGS)
            trials[k] = ok
            return ok

        t0 = time.monotonic()
        loop = smallest_heap(works, 16, 192)
        secs = time.monotonic() - t0

        def sign_works(k: int) -> bool:
            d = Path(tmp) / f"sign{k}"
            for args in (["keygen", "--dir", str(d), "--secret", "11" * 32],
                         ["sign", "--dir", str(d), "--data", '{"temp": 21.37}']):
                p = subprocess.run([mp, "-X", f"heapsize={k}k", str(rig.fw / "main.py"), *args],
                                   capture_output=True, text=True, timeout=120)
                if p.returncode != 0:
                    return False
            return True

        sign = smallest_heap(sign_works, 8, 96)
    return {"loop_heap_kib_min": loop, "loop_heap_readings": LOOP_READINGS,
            "loop_heap_goal_kib": GOAL_LOOP_HEAP_KIB,
            "loop_heap_trials": {str(k): v for k, v in sorted(trials.items())},
            "loop_heap_search_s": round(secs, 1), "sign_heap_kib_min_baseline": sign,
            "loop_heap_ratio_to_sign": round(loop / sign, 2) if loop and sign else None}


# The Unix port's own manifest (asyncio) is replaced by FROZEN_MANIFEST: included again here.
_FROZEN_MANIFEST = """include("$(MPY_DIR)/extmod/asyncio")
include(%r)
"""


def word_bits(mp: str) -> int:
    """64 or 32: the word size of a MicroPython binary."""
    out = subprocess.run([mp, "-c", "import sys; print(sys.maxsize)"], capture_output=True,
                         text=True, check=True).stdout
    return 64 if int(out) > 2**32 else 32


def frozen_binary(bits: int = 64) -> str | None:
    """The Unix port with the firmware frozen in, built (or brought up to date) from the source
    tools/install-micropython unpacked, 32-bit when bits is 32 (as the 32-bit binary measured
    next to it; needs gcc-multilib); None when that source is not there."""
    work = ROOT / ".cache" / "micropython" / "build"
    srcs = sorted(work.glob("micropython-*/ports/unix"))
    if not srcs:
        return None
    out = ROOT / ".cache" / ("micropython-frozen" if bits == 64 else f"micropython-frozen{bits}")
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.py"
    manifest.write_text(_FROZEN_MANIFEST % str(FIRMWARE / "manifest.py"))
    lib = work / "empty-lib"
    lib.mkdir(exist_ok=True)
    if not (lib / "README.md").exists():
        (lib / "README.md").write_text("Empty stand-in for micropython-lib.\n")
    p = subprocess.run(
        ["make", "-C", str(srcs[0]), f"-j{os.cpu_count() or 2}", f"BUILD={out / 'build'}",
         "MICROPY_PY_BTREE=0", "MICROPY_SSL_MBEDTLS=0", "MICROPY_SSL_AXTLS=0",
         "MICROPY_PY_SSL=0", "MICROPY_PY_FFI=0", f"FROZEN_MANIFEST={manifest}",
         f"MPY_LIB_DIR={lib}", *(["MICROPY_FORCE_32BIT=1"] if bits == 32 else [])],
        capture_output=True, text=True, timeout=900)
    binary = out / "build" / "micropython"
    if p.returncode != 0 or not binary.exists():
        raise RuntimeError("building the frozen Unix port failed: " + p.stderr[-2000:])
    return str(binary)


def loop_frozen(mp: str) -> dict[str, Any]:
    frozen = frozen_binary(word_bits(mp))
    if frozen is None:
        return {"loop_heap_kib_min_frozen": None, "firmware_ram_bytes_frozen": None}
    p = subprocess.run([frozen, "-c", _RAM_SCRIPT % "/nonexistent"], capture_output=True,
                       text=True, timeout=60)
    ram = int(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else None
    with tempfile.TemporaryDirectory(prefix="bench-fw-frozen-") as tmp:
        rig = LoopRig(frozen, Path(tmp), devices=9)
        shutil.rmtree(rig.fw / "anchor")  # main.py alone: the anchor package is the frozen one
        with rig:
            loop = smallest_heap(lambda k: rig.run_loop(k, LOOP_READINGS)[0], 16, 192)
    return {"loop_heap_kib_min_frozen": loop, "firmware_ram_bytes_frozen": ram}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


SECTIONS: list[tuple[str, Callable[[str], dict[str, Any]]]] = [
    ("firmware_ram", both_word_sizes(firmware_ram)),
    ("loop_heap", both_word_sizes(loop_heap)),
    ("loop_frozen", both_word_sizes(loop_frozen)),
]


def summary(res: dict[str, dict[str, Any]]) -> list[str]:
    r, h, f = res["firmware_ram"], res["loop_heap"], res["loop_frozen"]
    loop, loop64 = h["loop_heap_kib_min"], h["loop_heap_kib_min_64bit"]

    def two(key: str, d: dict[str, Any], unit: str = "") -> str:
        return f"{d[key]}{unit} (64-bit: {d[key + '_64bit']}{unit})"

    if loop is not None:
        goal = ("meets the goal" if loop <= GOAL_LOOP_HEAP_KIB else "MISSES the goal")
    else:
        goal = ("NOT MEASURED: no 32-bit build; run 'tools/install-micropython --32bit' (x86_64 "
                "with gcc-multilib) or set IOT_ANCHOR_MICROPYTHON32")
    by_module = r["firmware_ram_bytes_by_module"] or r["firmware_ram_bytes_by_module_64bit"] or {}
    which = "32-bit" if r["firmware_ram_bytes_by_module"] else "64-bit"
    return [
        "  heap figures on the 32-bit build of the Unix port (a board's object sizes), the 64-bit "
        "binary's in brackets:",
        f"  loaded firmware RAM (all modules): {two('firmware_ram_bytes_mpy', r)} bytes from "
        f".mpy, {two('firmware_ram_bytes_source', r)} from .py sources (ratio "
        f"{two('firmware_ram_ratio_mpy_source', r)}); smallest heap to import it: "
        f"{two('import_heap_kib_mpy', r, ' KiB')} from .mpy, "
        f"{two('import_heap_kib_source', r, ' KiB')} from sources",
        f"  RAM once the loop has started (start-up modules dropped, its objects built): "
        f"{two('firmware_ram_bytes_loop_started', r)} bytes",
        f"    by module (.mpy, {which}): " + ", ".join(
            f"{k} {v}" for k, v in sorted(by_module.items(), key=lambda kv: -kv[1])),
        f"  smallest heap for the device loop: {loop} KiB on the 32-bit build, {loop64} KiB on "
        f"the 64-bit one (ratio 64/32: {_ratio(loop64, loop)}; {h['loop_heap_readings']} "
        f"readings anchored end to end via Mosquitto and the gateway, from .mpy; goal <= "
        f"{GOAL_LOOP_HEAP_KIB} KiB on the 32-bit build: {goal}); baseline 'main.py sign' alone: "
        f"{two('sign_heap_kib_min_baseline', h, ' KiB')} (ratio loop/sign "
        f"{two('loop_heap_ratio_to_sign', h)})",
        f"  firmware frozen into the binary:   {two('firmware_ram_bytes_frozen', f)} bytes of RAM "
        f"loaded, the loop in {two('loop_heap_kib_min_frozen', f, ' KiB')} (as on a board whose "
        f"MicroPython build has the firmware frozen in); ratio to .mpy: "
        f"{_ratio(f['loop_heap_kib_min_frozen'], loop)} "
        f"(64-bit: {_ratio(f['loop_heap_kib_min_frozen_64bit'], loop64)})",
    ]


def main(argv: list[str] | None = None) -> int:
    import argparse

    names = [n for n, _ in SECTIONS]
    ap = argparse.ArgumentParser(description="Board-sized firmware heap figures (see the module "
                                 "docstring); all sections on both word sizes by default.")
    ap.add_argument("--only", action="append", choices=names, metavar="SECTION",
                    help="run only this section (repeatable): " + ", ".join(names))
    ap.add_argument("--bits", type=int, choices=(32, 64),
                    help="measure only the 32-bit build or only the 64-bit binary")
    a = ap.parse_args(argv)
    mp = micropython()
    global _ONLY_BITS
    _ONLY_BITS = a.bits
    res: dict[str, dict[str, Any]] = {}
    for name, fn in SECTIONS:
        if a.only and name not in a.only:
            continue
        print(f"bench-firmware-boards: {name} ...", file=sys.stderr, flush=True)
        res[name] = fn(mp)
    if not a.only:
        for line in summary(res):
            print(line)
    else:
        for name, r in res.items():
            print(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in r.items()
                                            if not isinstance(v, dict)))
    flat: dict[str, Any] = {}
    for r in res.values():
        flat.update(r)
    print(json.dumps(flat, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
