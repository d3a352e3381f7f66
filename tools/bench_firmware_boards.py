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
                 with FROZEN_MANIFEST = asyncio + the anchor package, cached under
                 .cache/micropython-frozen/): the bytecode then stays in the binary, as it stays
                 in flash on a board whose MicroPython is built with the firmware frozen in.

The Unix port is 64-bit: its objects are larger than on a 32-bit board (pointers and small ints
twice the size), so these heaps are upper bounds for an ESP32 or RP2040. For board-sized
figures, build the Unix port 32-bit (apt-get install gcc-multilib, then make -C ports/unix
MICROPY_FORCE_32BIT=1 with the options tools/install-micropython uses) and run this file with
IOT_ANCHOR_MICROPYTHON=<that binary>.

Run alone: `python tools/bench_firmware_boards.py` prints the same lines, then one JSON object.
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

from gateway.broker import PrivateBroker  # noqa: E402
from gateway.provision import choose_mpy_cross  # noqa: E402

FIRMWARE = ROOT / "firmware"
GOAL_LOOP_HEAP_KIB = 48
LOOP_READINGS = 20  # per binary-search trial (the heap test runs 50)

_RAM_SCRIPT = """
import gc, sys
sys.path.insert(0, %r)
gc.collect()
m0 = gc.mem_alloc()
from anchor import device, mqtt, outbox, state, cose, cbor, p256, hmac256, board, config, startup
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
from anchor import device, unload
opts = device.parse_args(["--dir", %r, "--broker", "mqtt://127.0.0.1:1"])
objs = device.build(opts)
unload("devicex", "mqttx", "statex", "statenew", "p256key", "p256x", "outboxx")
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
for m in ('anchor', 'anchor.cbor', 'anchor.hmac256', 'anchor.p256', 'anchor.cose',
          'anchor.state', 'anchor.outbox', 'anchor.mqtt', 'anchor.board', 'anchor.device',
          'anchor.config', 'anchor.startup'):
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


def mpy_format(mp: str) -> tuple[int, int]:
    out = subprocess.run([mp, "-c", "import sys; print(sys.implementation._mpy)"],
                         capture_output=True, text=True, check=True).stdout
    v = int(out)
    return v & 0xFF, (v >> 8) & 3


def compile_tree(mp: str, out: Path) -> Path:
    """firmware/ as a board holds it after provisioning, for the Unix port: every anchor/*.py
    (board_unix.py included) compiled to .mpy with the mpy-cross matching `mp`, main.py as
    source. Returns the directory."""
    exe = choose_mpy_cross(mpy_format(mp))
    (out / "anchor").mkdir(parents=True, exist_ok=True)
    for src in sorted((FIRMWARE / "anchor").glob("*.py")):
        subprocess.run([exe, "-o", str(out / "anchor" / (src.stem + ".mpy")), "-s",
                        f"anchor/{src.name}", str(src)], check=True, capture_output=True)
    shutil.copy(FIRMWARE / "main.py", out / "main.py")
    return out


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
        self.fw = compile_tree(mp, workdir / "fw")
        self.broker = PrivateBroker(workdir=workdir / "broker")
        self.data = workdir / "gw"
        self.gateway: subprocess.Popen[bytes] | None = None
        self.free: list[Path] = []
        self.devices = devices

    def __enter__(self) -> LoopRig:
        try:
            self.broker.start()
            iot("init", "--data", str(self.data))
            for i in range(self.devices):
                d = self.dir / f"dev{i:02d}"
                p = subprocess.run([self.mp, str(self.fw / "main.py"), "keygen", "--dir", str(d),
                                    "--id", f"heap-{i:02d}"], capture_output=True, text=True,
                                   timeout=60, check=True)
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
        subprocess.run([mp, str(fw / "main.py"), "keygen", "--dir", str(d), "--secret", "11" * 32],
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
    return {"micropython_word_bits": word_bits(mp),
            "firmware_ram_bytes_mpy": mpy, "firmware_ram_bytes_source": src,
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


_FROZEN_MANIFEST = """include("$(MPY_DIR)/extmod/asyncio")
package("anchor", base_path=%r)
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
    manifest.write_text(_FROZEN_MANIFEST % str(FIRMWARE))
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
    ("firmware_ram", firmware_ram),
    ("loop_heap", loop_heap),
    ("loop_frozen", loop_frozen),
]


def summary(res: dict[str, dict[str, Any]]) -> list[str]:
    r, h = res["firmware_ram"], res["loop_heap"]
    loop = h["loop_heap_kib_min"]
    goal = ("meets the goal" if loop is not None and loop <= GOAL_LOOP_HEAP_KIB
            else "MISSES the goal")
    return [
        f"  loaded firmware RAM (all modules): {r['firmware_ram_bytes_mpy']} bytes from .mpy, "
        f"{r['firmware_ram_bytes_source']} from .py sources (ratio "
        f"{r['firmware_ram_ratio_mpy_source']:.2f}); smallest heap to import it: "
        f"{r['import_heap_kib_mpy']} KiB from .mpy, {r['import_heap_kib_source']} KiB from "
        f"sources (ratio {r['import_heap_ratio_mpy_source']})",
        f"  RAM once the loop has started (start-up modules dropped, its objects built): "
        f"{r['firmware_ram_bytes_loop_started']} bytes",
        "    by module (.mpy): " + ", ".join(
            f"{k} {v}" for k, v in sorted(r["firmware_ram_bytes_by_module"].items(),
                                          key=lambda kv: -kv[1])),
        f"  smallest heap for the device loop: {loop} KiB ({h['loop_heap_readings']} readings "
        f"anchored end to end via Mosquitto and the gateway, from .mpy; goal <= "
        f"{GOAL_LOOP_HEAP_KIB} KiB: {goal}); baseline 'main.py sign' alone: "
        f"{h['sign_heap_kib_min_baseline']} KiB (ratio {h['loop_heap_ratio_to_sign']})",
        f"  firmware frozen into the binary:   {res['loop_frozen']['firmware_ram_bytes_frozen']} "
        f"bytes of RAM loaded, the loop in {res['loop_frozen']['loop_heap_kib_min_frozen']} KiB "
        "(as on a board whose MicroPython build has the firmware frozen in); ratio to .mpy: "
        f"{_ratio(res['loop_frozen']['loop_heap_kib_min_frozen'], loop)}",
        f"  ({r['micropython_word_bits']}-bit Unix port"
        + (": a 32-bit board needs less for the same objects)" if r["micropython_word_bits"] == 64
           else ": objects the size of a 32-bit board's)"),
    ]


def main() -> int:
    mp = micropython()
    res: dict[str, dict[str, Any]] = {}
    for name, fn in SECTIONS:
        print(f"bench-firmware-boards: {name} ...", file=sys.stderr, flush=True)
        res[name] = fn(mp)
    for line in summary(res):
        print(line)
    flat: dict[str, Any] = {}
    for name, _ in SECTIONS:
        flat.update(res[name])
    print(json.dumps(flat, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
