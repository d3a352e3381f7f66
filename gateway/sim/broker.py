"""Start and stop a private Mosquitto broker on a free loopback port.

Used by `iot-anchor demo`, the benches and the tests. It never touches the system
service: it writes its own config into a temporary folder and listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from gateway.errors import AnchorError


def find_mosquitto() -> str:
    """Return the path of the mosquitto binary, or raise with the install command."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise AnchorError(
        "mosquitto is not installed",
        "install it with 'sudo apt-get install -y mosquitto' (or run 'make setup')",
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateBroker:
    """A Mosquitto process on 127.0.0.1:<port> with a generated config.

    Use as a context manager, or call start()/stop(). restart() keeps the port and the
    persistence file, so sessions and queued QoS 1 messages survive a restart.
    `extra_config` lines are appended to the generated config (ACLs, password files).
    `autosave_interval` (seconds between saves of the persistence file) is 1 for the tests, so
    that a SIGKILL loses at most a second; the benches pass `iot-anchor broker-config`'s 30.
    """

    def __init__(
        self,
        port: int | None = None,
        workdir: str | Path | None = None,
        extra_config: str = "",
        persistence: bool = True,
        anonymous: bool = True,
        autosave_interval: int = 1,
    ) -> None:
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="iot-anchor-broker-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.extra_config = extra_config
        self.persistence = persistence
        self.anonymous = anonymous
        self.autosave_interval = autosave_interval
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        conf = self.dir / "mosquitto.conf"
        lines = [
            # Started as root, Mosquitto drops to user "mosquitto", which can neither reach a
            # folder under root's private temporary paths nor write its persistence file there:
            # every save then failed ("Permission denied" in its log) and a restart lost the
            # sessions and their queued messages. This broker serves 127.0.0.1 only, from our own
            # folder, so as root it stays root. (extra_config may still set another user.)
            *(["user root"] if os.geteuid() == 0 else []),
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'true' if self.anonymous else 'false'}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.dir}/",
            f"autosave_interval {self.autosave_interval}",
            "max_queued_messages 1000000",
            "max_inflight_messages 0",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        conf.write_text("\n".join(lines) + "\n" + self.extra_config + "\n")
        return conf

    def start(self, timeout: float = 10.0) -> PrivateBroker:
        if self.proc is not None and self.proc.poll() is None:
            return self
        conf = self._write_config()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(conf)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AnchorError(
                    f"mosquitto exited at start (code {self.proc.returncode})",
                    f"see its log in {self.log_path}",
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AnchorError(
            f"mosquitto did not listen on 127.0.0.1:{self.port} within {timeout:.0f} s",
            f"see its log in {self.log_path}",
        )

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL the broker (for fault tests)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivateBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
