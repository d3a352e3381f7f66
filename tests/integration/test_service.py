"""The MQTT service against the real Mosquitto, with a small in-memory stand-in pipeline.

These tests pin the service's own duties (batching, acks only after the commit, PUBACK to the
broker only after the commit, retained checkpoint, clean stop); the end-to-end tests in
test_e2e.py run the real pipeline with real MicroPython devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiomqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.downlink import Downlink
from gateway.errors import StorageError
from gateway.service import runner as service
from gateway.service.config import ServiceConfig
from gateway.service.runner import GatewayService
from gateway.sim.broker import PrivateBroker
from gateway.wire import downlink as wire_downlink

# The gateway's downlink key and one device key for every fake device ("d1", "d2", ...): acks
# are sealed for that key, and the collector opens them with the same MAC key.
_GW_KEY = ec.derive_private_key(0x5EED, ec.SECP256R1())
_DEV_KEY = ec.derive_private_key(0xD00D, ec.SECP256R1())
_DEV_PUB = _DEV_KEY.public_key().public_bytes(serialization.Encoding.X962,
                                              serialization.PublicFormat.UncompressedPoint)


def _downlink() -> Downlink:
    return Downlink(_GW_KEY, lambda dev: _DEV_PUB, lambda: 1)


def _ack(topic: str, payload: bytes) -> dict[str, Any]:
    """A sealed ack as the device sees it: opened with its MAC key (so also checked)."""
    dev = topic.split("/")[1]
    k = wire_downlink.device_key(_DEV_KEY.exchange(ec.ECDH(), _GW_KEY.public_key()), dev)
    ctr, upto, seqs, entry = wire_downlink.decode_ack_payload(
        wire_downlink.open_sealed(k, topic, payload))
    return {"ctr": ctr, "upto": upto, "seqs": seqs, "entry": entry}


@dataclass
class FakePipeline:
    """Readings are b"<dev>:<seq>"; anything else, or a dev/topic mismatch, is rejected."""

    key_id: str = "testkey"
    fail_commits: int = 0
    fail_submits: int = 0
    stored: dict[tuple[str, int], int] = field(default_factory=dict)  # -> entry
    open_batch: list[tuple[str, int]] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    entries: int = 0
    rejected: int = 0
    commit_gate: threading.Event | None = None
    commits: list[float] = field(default_factory=list)

    def gateway_key_id(self) -> str:
        return self.key_id

    def latest_checkpoint(self) -> str | None:
        return None

    def close(self) -> None:
        pass

    def start(self, messages: list[tuple[bytes, str | None]]) -> list[tuple[bytes, str | None]]:
        return messages  # nothing to verify ahead: finish does the work

    def finish(self, messages: list[tuple[bytes, str | None]]) -> list[str]:
        if self.fail_submits:
            self.fail_submits -= 1
            raise StorageError("database is locked (simulated)", "wait")
        out = []
        for payload, topic_dev in messages:
            try:
                dev, seq_s = payload.decode().split(":")
                seq = int(seq_s)
            except ValueError:
                self.rejected += 1
                out.append("rejected")
                continue
            if dev != topic_dev:
                self.rejected += 1
                out.append("rejected")
                continue
            self.touched.add(dev)
            if (dev, seq) in self.stored or (dev, seq) in self.open_batch:
                out.append("duplicate")
            else:
                self.open_batch.append((dev, seq))
                out.append("accepted")
        return out

    def pending(self) -> int:
        return len(self.open_batch)

    def commit(self) -> Any:
        if self.commit_gate is not None:
            self.commit_gate.wait(30)
        if self.fail_commits:
            self.fail_commits -= 1
            raise StorageError("disk full (simulated)", "free some space")
        entry = self.entries
        self.entries += 1
        n = len(self.open_batch)
        for k in self.open_batch:
            self.stored[k] = entry
        self.open_batch = []
        acks = {}
        for dev in sorted(self.touched):
            seqs = sorted(s for d, s in self.stored if d == dev)
            upto = -1
            while upto + 1 in seqs:
                upto += 1
            acks[dev] = SimpleNamespace(upto=upto, seqs=[s for s in seqs if s > upto],
                                        entry=entry)
        self.touched = set()
        import time

        self.commits.append(time.monotonic())
        return SimpleNamespace(entry=entry, root=bytes([entry]) * 32, readings=n,
                               checkpoint=f"iot-anchor/test\n{entry + 1}\nroot\n", acks=acks,
                               actions=[], rejected={})


async def _one_reading_then_stop(svc: GatewayService, task: asyncio.Task[int],
                                 pipe: FakePipeline, port: int, dev: str) -> None:
    """Publish reading 0 of `dev` on the broker at `port`, wait (5 s at most) until the service
    has stored it, then stop the service, which must exit 0."""
    async with aiomqtt.Client("127.0.0.1", port) as pub:
        await pub.publish(f"anchor/{dev}/readings", f"{dev}:0".encode(), qos=1)
    for _ in range(100):
        if pipe.stored:
            break
        await asyncio.sleep(0.05)
    svc.request_stop()
    assert await asyncio.wait_for(task, 20) == 0


async def _start(svc: GatewayService) -> asyncio.Task[int]:
    task = asyncio.create_task(svc.run())
    for _ in range(200):
        if svc.connected:
            return task
        await asyncio.sleep(0.05)
    raise AssertionError("service did not connect")


async def _collector(broker: PrivateBroker, topics: list[str]
                     ) -> tuple[list[tuple[str, bytes, bool]], asyncio.Task[None]]:
    """A subscriber to `topics` in a task, once it has subscribed: (what it got, the task)."""
    got: list[tuple[str, bytes, bool]] = []
    ready = asyncio.Event()
    col = asyncio.create_task(_collect(broker, topics, got, ready))
    await ready.wait()
    return got, col


async def _stop(svc: GatewayService, task: asyncio.Task[int], col: asyncio.Task[None],
                settle: float = 0.0) -> None:
    """Stop the service (it must exit 0), then, `settle` seconds later, the collector."""
    svc.request_stop()
    assert await asyncio.wait_for(task, 20) == 0
    await asyncio.sleep(settle)
    col.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await col


async def _collect(broker: PrivateBroker, topics: list[str], out: list[tuple[str, bytes, bool]],
                   ready: asyncio.Event) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port) as c:
        for t in topics:
            await c.subscribe(t, qos=1)
        ready.set()
        async for m in c.messages:
            out.append((m.topic.value, bytes(m.payload), m.retain))  # type: ignore[arg-type]


def _cfg(broker: PrivateBroker, tmp_path: Path, **kw: Any) -> ServiceConfig:
    return ServiceConfig(data_dir=tmp_path, broker=broker.url, **kw)


def test_batches_acks_and_checkpoint(broker: PrivateBroker, tmp_path: Path) -> None:
    pipe = FakePipeline()

    async def main() -> None:
        svc = GatewayService(_cfg(broker, tmp_path, batch_interval=0.3, batch_max=5),
                             lambda: pipe, _downlink)
        task = await _start(svc)
        got, col = await _collector(broker, ["anchor/+/ack", "anchor/checkpoint"])
        async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
            for seq in range(12):
                await pub.publish("anchor/d1/readings", f"d1:{seq}".encode(), qos=1)
            await pub.publish("anchor/d2/readings", b"d1:99", qos=1)  # wrong topic
            await pub.publish("anchor/d2/readings", b"d2:1", qos=1)  # gap at 0
            await pub.publish("anchor/d1/readings", b"d1:3", qos=1)  # duplicate
        for _ in range(100):
            acks = [_ack(t, p) for t, p, _ in got if t == "anchor/d1/ack"]
            if acks and acks[-1]["upto"] == 11 and any(t == "anchor/d2/ack" for t, _, _ in got):
                break
            await asyncio.sleep(0.05)
        await _stop(svc, task, col)
        d1 = [_ack(t, p) for t, p, _ in got if t == "anchor/d1/ack"]
        d2 = [_ack(t, p) for t, p, _ in got if t == "anchor/d2/ack"]
        assert d1[-1]["upto"] == 11 and d1[-1]["seqs"] == []
        assert d2[-1] == {"upto": -1, "seqs": [1], "entry": d2[-1]["entry"],
                          "ctr": d2[-1]["ctr"]}
        # sealed for each device with counters that only grow (epoch 1 here)
        for acks in (d1, d2):
            ctrs = [a["ctr"] for a in acks]
            assert ctrs == sorted(set(ctrs)) and ctrs[0] == (1 << 32) + 1, ctrs
        # batch_max 5: 12 + 1 readings need at least 3 batches, none larger than 5
        assert pipe.entries >= 3
        assert len(pipe.stored) == 13 and pipe.rejected == 1
        cps = [p.decode() for t, p, _ in got if t == "anchor/checkpoint"]
        assert cps and cps[-1] == f"iot-anchor/test\n{pipe.entries}\nroot\n"

        # The checkpoint is retained: a new subscriber gets the latest one.
        async with aiomqtt.Client("127.0.0.1", broker.port) as c:
            await c.subscribe("anchor/checkpoint", qos=1)
            m = await asyncio.wait_for(c.messages.__anext__(), 5)
            assert m.retain and bytes(m.payload) == cps[-1].encode()  # type: ignore[arg-type]

    asyncio.run(main())


@pytest.mark.parametrize("puback", ["commit", "receipt"])
def test_no_ack_and_no_puback_before_commit(
    broker: PrivateBroker, tmp_path: Path, puback: str
) -> None:
    """A failed commit acknowledges nothing; a restarted gateway gets the message again.

    With --puback receipt (paho's default) the broker forgets the message instead: the
    contrast shows that the redelivery comes from the delayed PUBACK.
    """
    pipe = FakePipeline(fail_commits=1000)

    async def first_run() -> list[tuple[str, bytes, bool]]:
        svc = GatewayService(_cfg(broker, tmp_path, batch_interval=0.2, puback=puback),
                             lambda: pipe, _downlink)
        task = await _start(svc)
        got, col = await _collector(broker, ["anchor/+/ack"])
        async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
            await pub.publish("anchor/d1/readings", b"d1:0", qos=1)
        await asyncio.sleep(1.5)  # several failed commits
        await _stop(svc, task, col)
        return got

    assert asyncio.run(first_run()) == []
    assert pipe.stored == {}

    # Restart with a working store: the broker redelivers the un-PUBACKed message.
    pipe2 = FakePipeline()

    async def second_run() -> None:
        svc = GatewayService(_cfg(broker, tmp_path, batch_interval=0.2), lambda: pipe2, _downlink)
        task = await _start(svc)
        for _ in range(40):
            if pipe2.stored:
                break
            await asyncio.sleep(0.05)
        svc.request_stop()
        assert await asyncio.wait_for(task, 20) == 0

    asyncio.run(second_run())
    assert pipe2.stored == ({("d1", 0): 0} if puback == "commit" else {})


def test_stop_commits_open_batch(broker: PrivateBroker, tmp_path: Path) -> None:
    """SIGTERM-style stop with a long batch interval: the open batch is committed and acked."""
    pipe = FakePipeline()

    async def main() -> None:
        svc = GatewayService(_cfg(broker, tmp_path, batch_interval=60), lambda: pipe, _downlink)
        task = await _start(svc)
        got, col = await _collector(broker, ["anchor/+/ack"])
        async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
            for seq in range(3):
                await pub.publish("anchor/d9/readings", f"d9:{seq}".encode(), qos=1)
        for _ in range(100):
            if svc.stats.received == 3:
                break
            await asyncio.sleep(0.05)
        assert pipe.entries == 0
        await _stop(svc, task, col, settle=0.3)
        assert pipe.entries == 1 and len(pipe.stored) == 3
        assert [_ack(t, p)["upto"] for t, p, _ in got] == [2]

    asyncio.run(main())


def test_bad_options() -> None:
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError):
        ServiceConfig(Path("."), batch_interval=0) and GatewayService(
            ServiceConfig(Path("."), batch_interval=0), FakePipeline)
    with pytest.raises(ConfigError):
        GatewayService(ServiceConfig(Path("."), broker="tcp://x"), FakePipeline)


def test_commit_fault_then_recovery(broker: PrivateBroker, tmp_path: Path) -> None:
    """Failing commits acknowledge nothing; once the store works again the batch commits once
    and its acks go out."""
    pipe = FakePipeline(fail_commits=3)

    async def main() -> None:
        svc = GatewayService(_cfg(broker, tmp_path, batch_interval=0.1), lambda: pipe, _downlink)
        task = await _start(svc)
        got, col = await _collector(broker, ["anchor/+/ack"])
        async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
            for seq in range(4):
                await pub.publish("anchor/d5/readings", f"d5:{seq}".encode(), qos=1)
        await asyncio.sleep(1.0)
        assert got == [] and pipe.entries == 0  # still failing (1 retry per second)
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.05)
        await _stop(svc, task, col)
        assert pipe.fail_commits == 0 and pipe.entries == 1 and len(pipe.stored) == 4
        assert [_ack(t, p)["upto"] for t, p, _ in got] == [3]

    asyncio.run(main())


def test_broker_restart_reconnects_and_delivers(broker: PrivateBroker, tmp_path: Path) -> None:
    pipe = FakePipeline()

    async def main() -> None:
        svc = GatewayService(_cfg(broker, tmp_path, batch_interval=0.1, backoff_min=0.05),
                             lambda: pipe, _downlink)
        task = await _start(svc)
        broker.kill()
        await asyncio.sleep(0.5)
        assert not svc.connected
        broker.start()
        for _ in range(200):
            if svc.connected:
                break
            await asyncio.sleep(0.05)
        assert svc.connected
        await _one_reading_then_stop(svc, task, pipe, broker.port, "d6")
        assert pipe.stored == {("d6", 0): 0}

    asyncio.run(main())


def test_backlog_above_inbox_limit_is_taken_in_rounds(broker: PrivateBroker,
                                                      tmp_path: Path) -> None:
    """A persistent-session backlog larger than the inbox limit: the service takes at most the
    limit (and what the socket read under way still holds) and stops reading the socket until
    the inbox is half worked off (back-pressure): everything is stored once, memory stays
    bounded."""
    pipe = FakePipeline()
    cfg = _cfg(broker, tmp_path, batch_interval=0.05, batch_max=20, inbox_max=60)

    async def main() -> None:
        svc = GatewayService(cfg, lambda: pipe, _downlink)
        task = await _start(svc)  # creates the persistent session
        svc.request_stop()
        assert await asyncio.wait_for(task, 20) == 0
        async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
            for seq in range(400):
                await pub.publish("anchor/d7/readings", f"d7:{seq}".encode(), qos=1)
        svc = GatewayService(cfg, lambda: pipe, _downlink)
        task = await _start(svc)
        for _ in range(400):
            if len(pipe.stored) == 400:
                break
            await asyncio.sleep(0.05)
        svc.request_stop()
        assert await asyncio.wait_for(task, 20) == 0
        assert sorted(pipe.stored) == [("d7", s) for s in range(400)]
        assert svc.stats.pauses >= 1
        assert svc.stats.inbox_peak <= 60

    asyncio.run(main())


def test_acks_in_flight_are_bounded(broker: PrivateBroker, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """At most ACKS_INFLIGHT_MAX acks wait for the broker's PUBACK (none is read while reading
    is paused); the rest wait coalesced per device and go out as PUBACKs come in: every device
    still gets its ack, with the highest sequence number."""
    monkeypatch.setattr(service, "ACKS_INFLIGHT_MAX", 3)
    pipe = FakePipeline()
    devs = [f"b{i:02d}" for i in range(40)]

    async def main() -> None:
        svc = GatewayService(_cfg(broker, tmp_path, batch_interval=0.05, batch_max=50),
                             lambda: pipe, _downlink)
        task = await _start(svc)
        got, col = await _collector(broker, ["anchor/+/ack"])
        peak = 0

        def last_acks() -> dict[str, int]:
            return {t.split("/")[1]: _ack(t, p)["upto"] for t, p, _ in got}

        async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
            for seq in range(3):
                for dev in devs:
                    await pub.publish(f"anchor/{dev}/readings", f"{dev}:{seq}".encode(), qos=1)
        for _ in range(400):
            peak = max(peak, svc.acks_in_flight())
            if last_acks() == dict.fromkeys(devs, 2):
                break
            await asyncio.sleep(0.01)
        await _stop(svc, task, col)
        assert last_acks() == dict.fromkeys(devs, 2)
        assert svc.stats.acks_held >= 1  # rounds were cut short ...
        assert peak <= 3 + 1  # ... so never more in flight (+1: the retained checkpoint)

    asyncio.run(main())


def test_submit_fault_then_recovery(broker: PrivateBroker, tmp_path: Path) -> None:
    """The store cannot be read for a while: the messages wait (backing off, not spinning)
    and are anchored once it works again."""
    import resource

    pipe = FakePipeline(fail_submits=2)

    async def main() -> None:
        svc = GatewayService(_cfg(broker, tmp_path, batch_interval=0.1), lambda: pipe, _downlink)
        task = await _start(svc)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime
        async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
            for seq in range(5):
                await pub.publish("anchor/d8/readings", f"d8:{seq}".encode(), qos=1)
        for _ in range(100):
            if len(pipe.stored) == 5:
                break
            await asyncio.sleep(0.05)
        cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu0
        svc.request_stop()
        assert await asyncio.wait_for(task, 20) == 0
        assert pipe.fail_submits == 0 and len(pipe.stored) == 5
        assert cpu < 1.0, f"{cpu:.2f} s of CPU while backing off"

    asyncio.run(main())


def test_mqtts_with_a_private_ca(broker: PrivateBroker, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """--broker mqtts://...: TLS, the broker verified against $IOT_ANCHOR_BROKER_CA."""
    import datetime
    import ipaddress
    import shutil
    import tempfile

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from gateway.sim.broker import free_port

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "iot-anchor service test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    # Mosquitto may drop to its own user before reading them: a world-readable folder.
    tls_dir = Path(tempfile.mkdtemp(prefix="iot-anchor-tls-"))
    try:
        tls_dir.chmod(0o755)
        crt, pem = tls_dir / "server.crt", tls_dir / "server.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
        pem.chmod(0o644)
        tls_port = free_port()
        tls = PrivateBroker(
            port=broker.port, workdir=tmp_path / "tls-broker",
            extra_config=f"listener {tls_port} 127.0.0.1\ncertfile {crt}\nkeyfile {pem}\n")
        broker.stop()  # the same port, now with a TLS listener beside it
        tls.start()
        try:
            pipe = FakePipeline()
            monkeypatch.setenv("IOT_ANCHOR_BROKER_CA", str(crt))
            cfg = ServiceConfig(data_dir=tmp_path, broker=f"mqtts://127.0.0.1:{tls_port}",
                                batch_interval=0.1)

            async def main() -> None:
                svc = GatewayService(cfg, lambda: pipe, _downlink)
                task = await _start(svc)
                await _one_reading_then_stop(svc, task, pipe, tls.port, "d9")

            asyncio.run(main())
            assert pipe.stored == {("d9", 0): 0}
        finally:
            tls.close()
    finally:
        shutil.rmtree(tls_dir, ignore_errors=True)
