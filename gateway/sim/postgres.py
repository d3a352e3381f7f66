"""Start and stop a private PostgreSQL cluster on a free loopback port.

Used by the tests and the benches, like `gateway.sim.broker.PrivateBroker` for Mosquitto. It
never touches a system cluster: `initdb` makes a new cluster in a temporary folder, the
postmaster listens on 127.0.0.1:<port> only (its Unix socket in that folder), and `close()`
stops it and removes the folder.

PostgreSQL refuses to run as root. Run as root (a container, CI), the cluster belongs to the
unprivileged user `postgres` (made by Debian's postgresql package), and the folder is made
under the system's temporary directory, which that user can reach (pytest's own tmp_path is
private to root). Authentication is `trust` on loopback: the cluster serves this machine's
tests only, for as long as they run.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from gateway.errors import AnchorError
from gateway.sim.broker import free_port

SUPERUSER = "anchor"  # the cluster's superuser (initdb -U), also the tests' database owner


def find_pg_bin(name: str) -> str:
    """The path of a PostgreSQL server program (initdb, postgres), or raise with the install
    command. Debian keeps them in /usr/lib/postgresql/<major>/bin, off PATH: the newest one."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if candidates:
        return candidates[-1]
    raise AnchorError(
        f"PostgreSQL's {name} is not installed",
        "install it with 'sudo apt-get install -y postgresql' (or run 'make setup')",
    )


def _service_user() -> pwd.struct_passwd | None:
    """Whom the cluster runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise AnchorError(
            "running as root, and there is no user 'postgres' to run PostgreSQL as",
            "install Debian's postgresql package (it makes the user), or run the tests as an "
            "unprivileged user") from None


class PrivatePostgres:
    """A PostgreSQL cluster on 127.0.0.1:<port>, made by initdb in its own folder.

    `start()` runs initdb the first time, then the postmaster; `stop()` shuts it down
    ("fast": open transactions are rolled back); `restart()` keeps the port and the data;
    `kill()` SIGKILLs the postmaster and its backends (a crash: the next start recovers from
    the WAL). `url(db)` is the libpq URL of database `db`; `create_database(name)` makes one.
    """

    def __init__(self, port: int | None = None, fsync: bool = True) -> None:
        self.port = port or free_port()
        self.fsync = fsync
        self._user = _service_user()
        self.dir = Path(tempfile.mkdtemp(prefix="iot-anchor-pg-"))
        self.data = self.dir / "cluster"
        self.log_path = self.dir / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        if self._user is not None:
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{db}"

    def _uid_gid(self) -> tuple[int | None, int | None, list[int] | None]:
        """user, group, extra_groups for subprocess: the service user's, or ours (None)."""
        if self._user is None:
            return None, None, None
        return self._user.pw_uid, self._user.pw_gid, []

    def _initdb(self) -> None:
        uid, gid, extra = self._uid_gid()
        out = subprocess.run(
            [find_pg_bin("initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
             "-E", "UTF8", "--locale=C", "--no-instructions"],
            capture_output=True, text=True, timeout=120, cwd=self.dir, user=uid, group=gid,
            extra_groups=extra)
        if out.returncode != 0:
            raise AnchorError(f"initdb failed (code {out.returncode}): {out.stderr.strip()[-400:]}",
                              "check the PostgreSQL installation ('make setup')")

    def start(self, timeout: float = 30.0) -> PrivatePostgres:
        if self.proc is not None and self.proc.poll() is None:
            return self
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        log = open(self.log_path, "ab")
        if self._user is not None:
            os.chown(self.log_path, self._user.pw_uid, self._user.pw_gid)
        uid, gid, extra = self._uid_gid()
        self.proc = subprocess.Popen(
            [find_pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
             "-c", f"fsync={'on' if self.fsync else 'off'}", "-c", "max_connections=50",
             "-c", "shared_buffers=32MB"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=self.dir, user=uid, group=gid, extra_groups=extra)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AnchorError(f"postgres exited at start (code {self.proc.returncode})",
                                  f"see its log in {self.log_path}")
            if self._accepts():
                return self
            time.sleep(0.05)
        self.stop()
        raise AnchorError(f"postgres did not accept connections on 127.0.0.1:{self.port} "
                          f"within {timeout:.0f} s", f"see its log in {self.log_path}")

    def _accepts(self) -> bool:
        """The server answers a real query (not only the TCP handshake of a recovering one)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                pass
        except OSError:
            return False
        import psycopg

        try:
            with psycopg.connect(self.url(), connect_timeout=2) as c:
                c.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def create_database(self, name: str) -> str:
        """CREATE DATABASE name; returns its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def stop(self, timeout: float = 30.0, mode: str = "fast") -> None:
        """Shut down: "fast" (SIGINT: roll back open transactions, then stop) or "immediate"
        (SIGQUIT: no checkpoint; the next start replays the WAL)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT if mode == "fast" else signal.SIGQUIT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill_group(proc)

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend (its process group)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            self._kill_group(proc)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode=mode)
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
