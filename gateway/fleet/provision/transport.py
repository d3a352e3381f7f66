"""How provisioning reaches a board: `BoardTransport`, what the steps need from one, and its two
kinds.

`MpremoteBoard` is a real board on a serial port (mpremote's raw REPL, as `mpremote exec`);
`LocalUnixBoard` is the MicroPython Unix port with a directory standing in for the board's flash
(tests, and trying the flow without hardware). The code they run on the board is in onboard/;
its paths are relative to the board's root, which is the working directory of both.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.fleet.provision import onboard
from gateway.fleet.provision.board_paths import HOLD
from gateway.fleet.provision.errors import BoardError, ProvisionError


@dataclass(frozen=True)
class BoardInfo:
    """What a board told about itself (onboard/info.py)."""

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


class BoardTransport(ABC):
    """What provisioning needs from a board. Paths are relative to the board's root."""

    name = "board"

    @abstractmethod
    def exec(self, code: str, timeout: float = 60) -> str:
        """Run code on the board; its stdout. Raises BoardError when the code raised."""

    @abstractmethod
    def write_file(self, path: str, data: bytes) -> None:
        """Write `data` to the file `path` (its directory exists), replacing it."""

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
        """Ask the board what it is; ProvisionError if it does not answer like MicroPython."""
        out = self.exec(onboard.code("info", "board_info"), timeout=20).strip().splitlines()
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
        """Create the directory `path` and its parents; existing ones are fine."""
        self.exec(onboard.code("files", "makedirs", path))

    def remove(self, paths: Sequence[str]) -> None:
        """Remove files that exist; missing ones are fine."""
        self.exec(onboard.code("files", "remove", list(paths)))

    def __enter__(self) -> BoardTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def last_error_line(text: str) -> str:
    """The last non-empty line of a board's output (a traceback's error line)."""
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
            why = last_error_line(err.decode(errors="replace"))
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
        # absolute: the code runs with the root as its cwd and also changes into it
        self.root = Path(root).absolute()
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
            raise BoardError(f"the board reported: {last_error_line(p.stderr or p.stdout)}",
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
