"""The emulated board: MicroPython's qemu port (MPS2-AN385, Cortex-M3) in qemu-system-arm.

`qemu_elf` builds it (tools/build-qemu-micropython; the session fails, never skips, when that
cannot be done). `qemu_board` starts one emulator per test with its UART on a pty, and yields
the pty path, which `mpremote connect /dev/pts/N` drives. The emulator is stopped after.

The qemu port has no writable file system, so `RomfsRamBoard` "copies" files the way its
limits allow: they are collected, packed into a ROMFS image (mpremote's VfsRomWriter), sent into
a bytearray on the board over the raw REPL and mounted with vfs.VfsRom at /rom, when the board
next runs code after a write. Everything lives in RAM until the next soft reset; later mpremote
invocations must use `resume`.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.fleet.provision import MpremoteBoard

ROOT = Path(__file__).resolve().parents[2]
MPREMOTE = str(Path(sys.executable).parent / "mpremote")


@pytest.fixture(scope="session", name="qemu_elf")
def qemu_elf_fixture() -> str:
    p = subprocess.run([str(ROOT / "tools" / "build-qemu-micropython")], capture_output=True,
                       text=True, timeout=900)
    if p.returncode != 0:
        pytest.fail(f"cannot build the qemu port: {p.stderr[-2000:]}")
    return p.stdout.strip().splitlines()[-1]


class Qemu:
    def __init__(self, elf: str) -> None:
        self.proc = subprocess.Popen(
            ["qemu-system-arm", "-machine", "mps2-an385", "-nographic", "-monitor", "null",
             "-semihosting", "-serial", "pty", "-kernel", elf],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode(errors="replace")
        m = re.search(r"/dev/pts/\d+", line)
        if not m:
            self.stop()
            pytest.fail(f"qemu did not announce its pty: {line!r}")
        self.pty = m.group(0)

    def mpremote(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([MPREMOTE, "connect", self.pty, *args], capture_output=True,
                              text=True, timeout=timeout, cwd=ROOT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture(name="qemu")
def qemu_fixture(qemu_elf: str) -> Iterator[Qemu]:
    q = Qemu(qemu_elf)
    try:
        yield q
    finally:
        q.stop()


class RomfsRamBoard(MpremoteBoard):
    """MpremoteBoard whose write_file fills a ROMFS image in the board's RAM (see above).
    Call commit() to send and mount it; paths then resolve under /rom."""

    MOUNT = "/rom"

    def __init__(self, port: str) -> None:
        super().__init__(port)
        self.files: dict[str, bytes] = {}
        self.dirty = False
        self.mounted = False

    def write_file(self, path: str, data: bytes) -> None:
        self.files[path] = data
        self.dirty = True

    def exec(self, code: str, timeout: float = 60) -> str:
        if self.dirty:
            self.commit()
        return super().exec(code, timeout)

    def makedirs(self, path: str) -> None:
        return None

    def restart(self) -> None:
        # No firmware runs on the emulated board, so no watchdog to escape; and the qemu port's
        # machine.reset() ends the emulator.
        return None

    def remove(self, paths: object) -> None:
        return None

    def image(self) -> bytes:
        from mpremote.romfs import VfsRomWriter

        w = VfsRomWriter()
        tree: dict[str, object] = {}
        for path, data in self.files.items():
            node = tree
            *dirs, name = path.split("/")
            for d in dirs:
                node = node.setdefault(d, {})  # type: ignore[assignment]
            node[name] = data

        def emit(node: dict[str, object]) -> None:
            for name in sorted(node):
                v = node[name]
                if isinstance(v, dict):
                    w.opendir(name)
                    emit(v)
                    w.closedir()
                else:
                    w.mkfile(name, v)

        emit(tree)
        return bytes(w.finalise())

    def commit(self, chunk: int = 3072) -> int:
        img = self.image()
        self.dirty = False
        if self.mounted:
            self.exec(f"import vfs\nvfs.umount({self.MOUNT!r})\n_rom = None")
        self.exec(f"import binascii, gc\ngc.collect()\n_rom = bytearray({len(img)})")
        for o in range(0, len(img), chunk):
            part = img[o:o + chunk]
            self.exec(f"_rom[{o}:{o + len(part)}] = "
                      f"binascii.a2b_base64({base64.b64encode(part).decode()!r})")
        m = self.MOUNT
        self.exec(f"import vfs, sys, os\nvfs.mount(vfs.VfsRom(_rom), {m!r})\n"
                  f"sys.path[:0] = [{m + '/lib'!r}, {m!r}]\nos.chdir({m!r})\ngc.collect()")
        self.mounted = True
        self.image_size = len(img)
        return len(img)
