"""Several `iot-anchor run --shared` gateways on one PostgreSQL ledger, with real parts:
PostgreSQL and Mosquitto (private ones), three gateway processes, the CPython load engine and
real MicroPython devices. Faults: one gateway SIGKILLed every few seconds and restarted (a
different one each time), PostgreSQL restarted once. At the end every published reading is
anchored exactly once, the ledger is one chain that `ledger verify` passes, and every gateway
anchored a share. Then the bad configurations, each a clear error (exit 2)."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.ledger import note
from gateway.sim import loadgen
from gateway.sim.broker import PrivateBroker, free_port
from gateway.sim.postgres import PrivatePostgres
from gateway.sim.simulate import MicroPythonFleet, register_devices, stop_process_group
from gateway.storage import downlink_keyfile, location
from gateway.storage.keyfile import save_private_key
from gateway.storage.store import KEY_NAME, VKEY_NAME, Store
from gateway.wire.signer import DeviceSigner

ROOT = Path(__file__).resolve().parents[2]
GROUP = "g1"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


class SharedGateway:
    """`iot-anchor run --shared` in its own process group, restartable; its log accumulates
    over its runs."""

    def __init__(self, name: str, data: Path, store: str, broker: str, log: Path) -> None:
        self.name, self.data, self.store, self.broker, self.log = name, data, store, broker, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> None:
        start = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cli("run", "--data", str(self.data), "--store", self.store, "--broker",
                    self.broker, "--shared", GROUP, "--batch-interval", "0.2"),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                start_new_session=True)
        deadline = time.monotonic() + 30
        while wait and "connected to" not in self.log.read_bytes()[start:].decode(errors="replace"):
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{self.name} did not connect"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        stop_process_group(self.proc, grace=0)  # SIGKILL at once (its verifiers too)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            stop_process_group(self.proc, grace=0.1)

    def anchored(self) -> int:
        """Readings this gateway's commits anchored, over all its runs (its log)."""
        return sum(int(n) for n in re.findall(r"batch: (\d+) readings", self.log.read_text()))


def _make_dirs(tmp: Path, url: str, n: int) -> tuple[list[Path], str]:
    """`init --store URL` once; each other gateway gets a copy of the data directory (the
    key), as an operator would set up another machine."""
    first = tmp / "gw0"
    store, vkey = Store.create(first, url)
    store.close()
    downlink_keyfile.create(first)  # as `iot-anchor init` does: the group shares it too
    dirs = [first]
    for k in range(1, n):
        d = tmp / f"gw{k}"
        shutil.copytree(first, d)
        dirs.append(d)
    return dirs, vkey


def test_three_shared_gateways_with_kills_and_a_database_restart(
        tmp_path: Path, broker: PrivateBroker, postgres: PrivatePostgres, pg_url: str,
        micropython: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(location, "command_line_store", pg_url)  # in-process Store.open(DIR)
    dirs, vkey = _make_dirs(tmp_path, pg_url, 3)
    # the devices: 2 MicroPython processes and 12 load-engine devices
    fleet = MicroPythonFleet(tmp_path / "fleet", 2, prefix="mp")
    assert fleet.prepare(dirs[0]) == 2
    states = loadgen.load_or_create_states(tmp_path / "load", [f"ld-{i:02d}" for i in range(12)])
    register_devices(dirs[0], {s.dev: DeviceSigner(s.dev, s.secret).public_key for s in states})
    gws = [SharedGateway(f"gw{k}", d, pg_url, broker.url, tmp_path / f"gw{k}.log")
           for k, d in enumerate(dirs)]
    engine: dict[str, Any] = {}
    try:
        for g in gws:
            g.start()
        cfg = loadgen.EngineConfig(broker.url, interval=0.1, duration=14, drain_timeout=90,
                                   ack_timeout=2.0, downlink_key=downlink_keyfile.public_bytes(
                                       downlink_keyfile.load_or_create(dirs[0])))

        def drive() -> None:
            try:
                engine["result"] = loadgen.run_engine(cfg, states, [140] * len(states), 2)
            except BaseException as e:  # noqa: BLE001 - reported by the test below
                engine["error"] = e

        load = threading.Thread(target=drive, daemon=True)
        load.start()
        fleet.start(broker.url, 0.25, 50, ("--ack-timeout", "1.5", "--timeout", "90"))
        # faults while the readings flow: a SIGKILL every ~3 s (a different gateway each
        # time, restarted 1 s later), and one PostgreSQL restart after the second
        for victim in range(4):
            time.sleep(2.0)
            g = gws[victim % 3]
            g.kill()
            time.sleep(1.0)
            if victim == 1:
                postgres.restart()  # "fast": every session is cut, open transactions roll back
            g.start()
        load.join(150)
        assert not load.is_alive(), "the load engine did not finish"
        fleet.wait(time.monotonic() + 90)
        assert "error" not in engine, engine.get("error")
        res = engine["result"]
        for g in gws:
            assert g.stop() == 0, g.log.read_text()[-3000:]
    finally:
        fleet.stop()
        for g in gws:
            if g.proc is not None:
                stop_process_group(g.proc, grace=0.5)
    # every device: everything it published was acknowledged ...
    for dev, d in res.devices.items():
        assert d["acknowledged"] == d["produced"] == 140, (dev, d)
    for r in fleet.reports():
        assert r.ok and r.summary["outbox"] == 0 and r.produced == 50, (r.dev, r.summary)
    # ... and took the acks of every gateway of the group: one growing downlink counter per
    # device (Store.next_downlink_counters), none refused as stale or replayed
    for d in fleet.devices:
        text = d.log.read_text(errors="replace")
        assert "ack upto=" in text, d.dev  # the device logs what it takes and refuses
        assert "bad-ack" not in text, (d.dev, [ln for ln in text.splitlines()
                                              if "bad-ack" in ln][:5])
    # ... and is in the ledger exactly once; one chain, verified
    with Store.open(dirs[0], readonly=True) as store:
        per_dev = dict(store.query("SELECT dev, COUNT(DISTINCT seq) FROM readings GROUP BY dev"))
        rows = store.reading_count()
        events = store.query("SELECT kind, COUNT(*) FROM events GROUP BY kind")
        entries = store.entry_count()
    assert per_dev == {**{s.dev: 140 for s in states}, "mp-0000": 50, "mp-0001": 50}
    assert rows == 12 * 140 + 2 * 50  # no (dev, seq) twice: rows == distinct seqs
    assert events == []
    out = subprocess.run(cli("ledger", "verify", "--data", str(dirs[1]), "--store", pg_url),
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0 and "ledger OK" in out.stdout, out.stdout + out.stderr
    assert f"{entries} entries" in out.stdout and f"{rows} readings" in out.stdout
    shares = {g.name: g.anchored() for g in gws}
    assert all(n > 0 for n in shares.values()), shares
    # each reading anchored by one commit (a gateway SIGKILLed between its COMMIT and its log
    # line anchored readings its log does not show)
    assert sum(shares.values()) <= rows, shares
    logs = "".join(g.log.read_text() for g in gws)
    assert "commit failed, nothing acknowledged" in logs or "cannot check readings" in logs
    note.verify_checkpoint(Store.open(dirs[2], readonly=True).latest_checkpoint()[1], vkey)
    # the retained checkpoint: one the group signed, of the final ledger or a little older
    retained = _retained_checkpoint(broker)
    cp = note.verify_checkpoint(retained, vkey)
    assert entries - 3 <= cp.size <= entries, (cp.size, entries)


def _retained_checkpoint(broker: PrivateBroker) -> str:
    import paho.mqtt.client as mqtt

    got: list[str] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cp-reader")
    c.on_message = lambda _c, _u, m: got.append(m.payload.decode())
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    c.subscribe("anchor/checkpoint", qos=0)
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    c.disconnect()
    c.loop_stop()
    assert got, "no retained checkpoint"
    return got[0]


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli("run", *args), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, stdin=subprocess.DEVNULL)


def _fake_broker(connack: bytes) -> tuple[int, threading.Thread]:
    """A broker that answers the first CONNECT with `connack` and then says nothing."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]

    def serve() -> None:
        with srv:
            srv.settimeout(30)
            conn, _ = srv.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(connack)
                conn.recv(1024)  # until the client gives up

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return port, t


def test_bad_configurations_are_clear_errors(tmp_path: Path, broker: PrivateBroker,
                                             pg_url: str) -> None:
    dirs, _ = _make_dirs(tmp_path, pg_url, 1)
    d = str(dirs[0])
    # an unreachable database
    down = f"postgresql://anchor@127.0.0.1:{free_port()}/anchor"
    out = _run("--data", d, "--store", down, "--broker", broker.url, "--shared", GROUP)
    assert out.returncode == 2 and "cannot connect to PostgreSQL" in out.stderr, out.stderr
    # a SQLite store cannot be shared
    lite = tmp_path / "lite"
    Store.create(lite)[0].close()
    out = _run("--data", str(lite), "--broker", broker.url, "--shared", GROUP)
    assert out.returncode == 2 and "--shared needs a store" in out.stderr, out.stderr
    # a gateway whose key is not the ledger's (another group's key)
    other = tmp_path / "other"
    shutil.copytree(dirs[0], other)
    (other / KEY_NAME).unlink()
    save_private_key(other / KEY_NAME, note.generate_key())
    out = _run("--data", str(other), "--store", pg_url, "--broker", broker.url, "--shared", GROUP)
    assert out.returncode == 2 and "is not the key this ledger was created with" in out.stderr
    # a second group on the same ledger (the first one claimed it)
    with Store.open(dirs[0], store=pg_url) as s:
        s.claim_shared_group(GROUP)
    out = _run("--data", d, "--store", pg_url, "--broker", broker.url, "--shared", "g2")
    assert out.returncode == 2 and "belongs to the shared group 'g1'" in out.stderr, out.stderr
    assert "--shared g1" in out.stderr
    # a broker without MQTT 5: an MQTT 3.1.1 broker answers an MQTT 5 CONNECT with return
    # code 1, unacceptable protocol version (MQTT 3.1.1 section 3.2.2.3)
    port, server = _fake_broker(b"\x20\x02\x00\x01")
    out = _run("--data", d, "--store", pg_url, "--broker", f"mqtt://127.0.0.1:{port}",
               "--shared", GROUP)
    server.join(5)
    assert out.returncode == 2 and "--shared needs MQTT 5" in out.stderr, out.stderr
    assert "unacceptable protocol version" in out.stderr and "Mosquitto 2.0" in out.stderr
    # an MQTT 5 broker whose CONNACK says "Shared Subscription Available: 0"
    port, server = _fake_broker(b"\x20\x05\x00\x00\x02\x2a\x00")
    out = _run("--data", d, "--store", pg_url, "--broker", f"mqtt://127.0.0.1:{port}",
               "--shared", GROUP)
    server.join(5)
    assert out.returncode == 2 and "does not offer shared subscriptions" in out.stderr, \
        out.stderr
    # a group name that cannot be one
    out = _run("--data", d, "--store", pg_url, "--broker", broker.url, "--shared", "a/b")
    assert out.returncode == 2 and "is not a group name" in out.stderr, out.stderr
    assert (dirs[0] / VKEY_NAME).is_file()
