"""The authenticated downlink end to end: real Mosquitto, real firmware devices on the Unix port,
the real gateway (docs/protocol.md, "The downlink"; issue 15).

- A compromised broker (a client with the gateway's credentials, the only one the ACL lets
  publish acks) forges acks while the gateway is down: the device refuses and counts every one,
  keeps its readings, and once the gateway runs they are all anchored: none lost.
- Commands: the gateway service sends one (`send_command`), the device runs it and confirms it
  with a COSE_Sign1 that the gateway verifies (`on_confirmation`); the same sealed command
  replayed and a forged one are refused and counted; a forged confirmation is refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest
from conftest import FIRMWARE, run_mp
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.cli import main as cli_main
from gateway.cli.run import pipeline_factory
from gateway.fleet.brokerconf import GATEWAY_USER, parse_listener, write_broker_config
from gateway.service.config import ServiceConfig
from gateway.service.runner import GatewayService
from gateway.sim.broker import PrivateBroker, find_mosquitto, free_port
from gateway.storage import downlink_keyfile
from gateway.wire import downlink as wire
from gateway.wire.downlink import Command, Confirmation

MAIN = str(FIRMWARE / "main.py")
ROOT = FIRMWARE.parent
pytestmark = pytest.mark.mosquitto


def _init(tmp_path: Path) -> tuple[Path, str]:
    """A data directory; (its path, the downlink public key in hex)."""
    data = tmp_path / "data"
    assert cli_main(["init", "--data", str(data)]) == 0
    return data, downlink_keyfile.public_bytes(downlink_keyfile.load_or_create(data)).hex()


def _device(mp: str, data: Path, d: Path, dev: str, downlink_hex: str) -> bytes:
    r = run_mp(mp, MAIN, "keygen", "--dir", str(d), "--id", dev, "--downlink-key", downlink_hex)
    assert r.returncode == 0, r.stderr
    pub = r.stdout.strip().splitlines()[-1]
    assert cli_main(["device", "add", dev, "--public-key", pub, "--data", str(data)]) == 0
    return bytes.fromhex(pub)


def _status(mp: str, d: Path) -> dict[str, Any]:
    r = run_mp(mp, MAIN, "status", "--dir", str(d))
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


class DeviceProc:
    """`main.py run` in a subprocess; its output lines collected."""

    def __init__(self, mp: str, d: Path, url: str, *args: str) -> None:
        self.p = subprocess.Popen([mp, MAIN, "run", "--dir", str(d), "--broker", url, *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_line(self, pred: Any, n: int = 1, timeout: float = 30) -> list[str]:
        with self.cond:
            ok = self.cond.wait_for(lambda: sum(1 for x in self.lines if pred(x)) >= n, timeout)
            assert ok, f"no {n} matching lines in {timeout} s: {self.lines}"
            return [x for x in self.lines if pred(x)]

    def finish(self, timeout: float = 90) -> dict[str, Any]:
        try:
            assert self.p.wait(timeout) == 0, self.lines
        finally:
            if self.p.poll() is None:
                self.p.kill()
                self.p.wait(10)
        time.sleep(0.1)
        with self.cond:
            summary: dict[str, Any] = json.loads(self.lines[-1])
        return summary


class AclBroker:
    """Mosquitto with the config `iot-anchor broker-config` writes (passwords, ACL)."""

    def __init__(self, tmp_path: Path, data: Path, devices: list[str]) -> None:
        self.port = free_port()
        self.cfg = write_broker_config(
            tmp_path / "broker", data / "broker-credentials.json", devices,
            listeners=[parse_listener(f"mqtt://127.0.0.1:{self.port}")],
            run_as="root" if os.geteuid() == 0 else None)
        self.log = tmp_path / "broker.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([find_mosquitto(), "-c", str(self.cfg.conf)],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.05)

    def url(self, user: str) -> str:
        return f"mqtt://{user}:{self.cfg.creds.password_for(user)}@127.0.0.1:{self.port}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _publisher(port: int, user: str | None = None, password: str | None = None,
               client_id: str = "") -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=mqtt.MQTTv311)
    if user is not None:
        c.username_pw_set(user, password)
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    return c


def _publish(c: mqtt.Client, topic: str, payload: bytes) -> None:
    info = c.publish(topic, payload, qos=1)
    info.wait_for_publish(5)
    assert info.is_published()


def test_forged_acks_through_the_broker_are_refused_and_no_reading_is_lost(
        tmp_path: Path, micropython: str) -> None:
    data, downlink_hex = _init(tmp_path)
    dev = "dev-f"
    d = tmp_path / dev
    _device(micropython, data, d, dev, downlink_hex)
    broker = AclBroker(tmp_path, data, [dev])
    gw = None
    attacker = None
    device = None
    try:
        n = 8
        device = DeviceProc(micropython, d, broker.url(dev), "--interval", "0.1", "--count",
                            str(n), "--timeout", "90", "--ack-timeout", "2")
        device.wait_line(lambda x: x.startswith(f"pub seq={n - 1} "))
        # The gateway is not running: a compromised broker, holding its credentials (the only
        # user the ACL lets publish acks), acknowledges everything the device sent.
        gw_user = GATEWAY_USER
        attacker = _publisher(broker.port, gw_user, broker.cfg.creds.password_for(gw_user),
                              client_id=gw_user)
        topic = f"anchor/{dev}/ack"
        plain = cbor2.dumps({"upto": n - 1, "seqs": [], "entry": 1}, canonical=True)
        payload = wire.ack_payload(1 << 40, n - 1, [], 1)
        forged = [
            plain,                                                  # the old, unsealed ack
            wire.seal(os.urandom(32), topic, payload),              # a key of its own
            wire.seal(os.urandom(32), topic, payload)[:-1] + b"\x00",
            b"\xd1\x84\x43\xa1\x01\x05\xa0" + b"\x40" * 3,          # a broken COSE_Mac0
        ]
        for msg in forged:
            _publish(attacker, topic, msg)
        bad = device.wait_line(lambda x: x.startswith("bad-ack"), n=len(forged))
        assert sorted(bad) == sorted(["bad-ack err=malformed", "bad-ack err=forged",
                                      "bad-ack err=forged", "bad-ack err=malformed"]), bad
        assert not any(x.startswith("ack ") for x in device.lines), device.lines
        attacker.disconnect()
        attacker.loop_stop()
        attacker = None
        # The real gateway now: everything the device kept is anchored.
        log = open(tmp_path / "gateway.log", "ab")  # noqa: SIM115 - closed below
        gw = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--data", str(data),
                               "--broker", broker.url(gw_user), "--batch-interval", "0.2"],
                              stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                              start_new_session=True)
        log.close()
        summary = device.finish()
        assert summary["produced"] == n and summary["acked"] == n and summary["outbox"] == 0
        assert summary["dropped"] == 0
    finally:
        if device is not None and device.p.poll() is None:
            device.p.kill()
            device.p.wait(10)
        if attacker is not None:
            attacker.disconnect()
            attacker.loop_stop()
        if gw is not None:
            os.killpg(gw.pid, signal.SIGTERM)
            gw.wait(30)
        broker.close()
    st = subprocess.run([sys.executable, "-m", "gateway", "ledger", "status", "--json",
                         "--data", str(data)], capture_output=True, text=True, cwd=ROOT,
                        timeout=60)
    status = json.loads(st.stdout)
    assert status["devices"][dev]["readings"] == n and status["devices"][dev]["last_seq"] == n - 1
    dstat = _status(micropython, d)
    assert dstat["outbox_waiting"] == 0 and dstat["next_seq"] == n
    assert dstat["downlink_refusals"] == {"malformed": 2, "forged": 2}, dstat
    assert dstat["downlink_refused"] == 4
    r = subprocess.run([sys.executable, "-m", "gateway", "ledger", "verify", "--data", str(data),
                        "--gateway-key", (data / "gateway.vkey").read_text().strip()],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_commands_are_run_confirmed_and_verified_replays_and_forgeries_refused(
        tmp_path: Path, micropython: str, broker: PrivateBroker) -> None:
    data, downlink_hex = _init(tmp_path)
    dev = "dev-c"
    d = tmp_path / dev
    _device(micropython, data, d, dev, downlink_hex)
    device = DeviceProc(micropython, d, broker.url, "--interval", "0.3", "--count", "30",
                        "--timeout", "60", "--ack-timeout", "2")
    confs: list[Confirmation] = []
    sealed: queue.Queue[bytes] = queue.Queue()

    async def scenario() -> GatewayService:
        cfg = ServiceConfig(data_dir=data, broker=broker.url, batch_interval=0.2)
        svc = GatewayService(cfg, pipeline_factory(data, 4096), on_confirmation=confs.append)
        task = asyncio.create_task(svc.run())
        watcher = _publisher(broker.port)   # the broker (no ACL here): sees and sends anything
        watcher.on_message = lambda c, u, m: sealed.put(bytes(m.payload))
        watcher.subscribe(f"anchor/{dev}/cmd", qos=1)
        try:
            for _ in range(400):
                if svc.connected and any(x.startswith("connected") for x in device.lines):
                    break
                await asyncio.sleep(0.05)
            assert svc.connected
            await asyncio.sleep(0.3)   # the device's subscriptions are done once connected
            await svc.send_command(Command(dev, 100, "output", {"name": "fan", "on": True}))
            original = await asyncio.to_thread(sealed.get, True, 10)
            for _ in range(200):
                if confs:
                    break
                await asyncio.sleep(0.05)
            assert len(confs) == 1, device.lines
            c = confs[0]
            assert (c.device, c.id, c.op, c.ok, c.result) == (
                dev, 100, "output", True, {"name": "fan", "on": True})
            assert svc.downlink is not None
            assert svc.downlink.verify_confirmation(dev, c.cose) == c
            # the same sealed bytes again, and one sealed with another key: refused
            _publish(watcher, f"anchor/{dev}/cmd", original)
            other = wire.seal(os.urandom(32), f"anchor/{dev}/cmd",
                              wire.command_payload(1 << 50, Command(dev, 101, "ping")))
            _publish(watcher, f"anchor/{dev}/cmd", other)
            await asyncio.to_thread(device.wait_line, lambda x: x.startswith("bad-cmd"), 2)
            # a forged confirmation (another key, the device's kid) is refused by the gateway
            fake = ec.generate_private_key(ec.SECP256R1())
            _publish(watcher, f"anchor/{dev}/confirm", _fake_confirmation(fake, dev))
            # a real ping, then the reading interval
            await svc.send_command(Command(dev, 102, "ping"))
            await svc.send_command(Command(dev, 103, "interval", {"seconds": 1}))
            for _ in range(200):
                if len(confs) >= 3:
                    break
                await asyncio.sleep(0.05)
            assert [x.id for x in confs] == [100, 102, 103], confs
            assert confs[1].ok and set(confs[1].result) == {"seq", "outbox"}
            assert confs[2].result == {"seconds": 1}
            assert svc.stats.confirmations == 3 and svc.stats.confirmations_refused == 1
            assert svc.stats.commands_sent == 3
        finally:
            watcher.disconnect()
            watcher.loop_stop()
            svc.request_stop()
            assert await asyncio.wait_for(task, 30) == 0
        return svc

    try:
        asyncio.run(scenario())
    finally:
        if device.p.poll() is None:
            device.p.kill()
            device.p.wait(10)
    assert "bad-cmd err=replayed" in device.lines and "bad-cmd err=forged" in device.lines
    assert "cmd id=100 op=output ok=1" in device.lines
    assert (d / "outputs" / "fan").read_text() == "1"
    st = _status(micropython, d)
    assert st["last_command"] == {"id": 103, "op": "interval", "args": {"seconds": 1},
                                  "ok": True}, st
    assert st["downlink_refusals"] == {"replayed": 1, "forged": 1}, st
    assert st["outputs"] == {"fan": True}


def _fake_confirmation(key: ec.EllipticCurvePrivateKey, dev: str) -> bytes:
    """A confirmation of command 100 for `dev`, signed with `key` (not the device's)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    prot = cbor2.dumps({1: -7, 4: dev.encode()}, canonical=True)
    payload = cbor2.dumps({"v": 1, "dev": dev, "cmd": 100, "op": "output", "ok": True,
                           "result": {}}, canonical=True)
    tbs = cbor2.dumps(["Signature1", prot, b"", payload])
    r, s = decode_dss_signature(key.sign(tbs, ec.ECDSA(hashes.SHA256())))
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    s = min(s, n - s)
    return cbor2.dumps(cbor2.CBORTag(18, [prot, {}, payload,
                                          r.to_bytes(32, "big") + s.to_bytes(32, "big")]))


def test_commands_in_a_48k_heap_on_the_32_bit_build(tmp_path: Path, micropython32: str,
                                                    broker: PrivateBroker) -> None:
    """The loop from .mpy (mpy-cross -O3, as `device provision` installs it) under -X
    heapsize=48k on the 32-bit build (a board's object sizes; docs/boards.md "Memory") runs
    commands while it anchors readings: each one confirmed, every reading anchored."""
    import shutil
    import tempfile

    sys.path.insert(0, str(ROOT / "tools"))
    from bench_firmware_boards import compile_tree

    data, downlink_hex = _init(tmp_path)
    dev = "dev-h"
    # a short path, as on a board (every module path is a qstr in RAM; LoopRig does the same)
    root = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    try:
        fw = compile_tree(micropython32, root)
        d = root / "d"
        r = subprocess.run([micropython32, str(fw / "main.py"), "keygen", "--dir", str(d),
                            "--id", dev, "--downlink-key", downlink_hex],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert cli_main(["device", "add", dev, "--public-key", r.stdout.split()[-1],
                         "--data", str(data)]) == 0
        n = 30
        device = subprocess.Popen(
            [micropython32, "-X", "heapsize=48k", str(fw / "main.py"), "run", "--dir", str(d),
             "--broker", broker.url, "--interval", "0.2", "--count", str(n), "--timeout",
             "60", "--ack-timeout", "3"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        confs: list[Confirmation] = []
        commands = [Command(dev, 10, "output", {"name": "fan", "on": True}),
                    Command(dev, 11, "ping"), Command(dev, 12, "interval", {"seconds": 1}),
                    Command(dev, 13, "output", {"name": "fan", "on": False})]

        async def scenario() -> None:
            cfg = ServiceConfig(data_dir=data, broker=broker.url, batch_interval=0.2)
            svc = GatewayService(cfg, pipeline_factory(data, 4096),
                                 on_confirmation=confs.append)
            task = asyncio.create_task(svc.run())
            try:
                for _ in range(400):
                    if svc.connected:
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.5)    # the device connects and subscribes
                for k, cmd in enumerate(commands):
                    await svc.send_command(cmd)
                    for _ in range(200):
                        if len(confs) > k:
                            break
                        await asyncio.sleep(0.05)
                # the readings: the service runs until the device has them all acknowledged
                await asyncio.to_thread(device.wait, 90)
            finally:
                svc.request_stop()
                assert await asyncio.wait_for(task, 30) == 0

        try:
            asyncio.run(scenario())
            out = device.communicate(timeout=30)[0]
        finally:
            if device.poll() is None:
                device.kill()
                device.wait(10)
        summary = json.loads(out.strip().splitlines()[-1])
        assert device.returncode == 0 and summary["error"] is None, out[-3000:]
        assert summary["produced"] == n and summary["acked"] == n and summary["outbox"] == 0
        assert [(c.id, c.ok) for c in confs] == [(10, True), (11, True), (12, True),
                                                 (13, True)], out[-3000:]
        assert (d / "outputs" / "fan").read_text() == "0"
    finally:
        shutil.rmtree(root, ignore_errors=True)
