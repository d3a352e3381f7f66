"""`iot-anchor broker-config` against the real Mosquitto: passwords, ACLs, TLS, revocation.

Under MQTT 3.1.1 Mosquitto drops a denied PUBLISH silently (the sender still gets its PUBACK),
so "refused" is shown by its absence: after each denied publish the same client publishes an
allowed marker, and because the broker handles one client's packets in order, once the marker
has arrived the denied message would have arrived before it if it had been let through.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import queue
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from gateway.cli import main as cli_main
from gateway.fleet.brokerconf import (
    BrokerConfig,
    TlsFiles,
    check_password,
    hash_password,
    load_credentials,
    parse_listener,
    write_broker_config,
)
from gateway.sim.broker import find_mosquitto, free_port

DEVICES = ["dev-a", "dev-b"]
WAIT = 5.0


class Broker:
    """Mosquitto started with a config written by broker-config; killed after the test."""

    def __init__(self, cfg: BrokerConfig) -> None:
        self.cfg = cfg
        self.log = cfg.conf.parent / "broker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [find_mosquitto(), "-c", str(self.cfg.conf)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        lst = self.cfg.listeners[0]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection((lst.host, lst.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("mosquitto did not start:\n" + self.log.read_text())

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Client:
    """A paho client with blocking connect/subscribe/publish and a queue of what it received."""

    def __init__(self, port: int, user: str | None, password: str | None,
                 tls_ca: Path | None = None, will: tuple[str, bytes] | None = None,
                 client_id: str | None = None) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv311, reconnect_on_failure=False,
                             clean_session=client_id is None)
        self.disconnects = 0
        if user is not None:
            self.c.username_pw_set(user, password)
        if tls_ca is not None:
            self.c.tls_set(ca_certs=str(tls_ca))
        if will is not None:
            self.c.will_set(will[0], will[1], qos=1, retain=False)
        self.port = port
        self.connack: queue.Queue[mqtt.ReasonCode] = queue.Queue()
        self.subacks: dict[int, list[mqtt.ReasonCode]] = {}
        self.acked: set[int] = set()
        self.msgs: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.cond = threading.Condition()
        self.c.on_connect = lambda c, u, f, rc, p: self.connack.put(rc)
        self.c.on_disconnect = self._on_disconnect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = self._on_publish
        self.c.on_message = lambda c, u, m: self.msgs.put((m.topic, m.payload, bool(m.retain)))

    def _on_disconnect(self, c: object, u: object, f: object, rc: object, p: object) -> None:
        self.disconnects += 1

    def _on_subscribe(self, c: object, u: object, mid: int, rcs: list, p: object) -> None:
        with self.cond:
            self.subacks[mid] = rcs
            self.cond.notify_all()

    def _on_publish(self, c: object, u: object, mid: int, rc: object, p: object) -> None:
        with self.cond:
            self.acked.add(mid)
            self.cond.notify_all()

    def connect(self) -> mqtt.ReasonCode:
        self.c.connect("127.0.0.1", self.port, keepalive=30)
        self.c.loop_start()
        return self.connack.get(timeout=WAIT)

    def subscribe(self, topic: str) -> bool:
        """True if the broker granted the subscription, False if it answered 0x80."""
        _, mid = self.c.subscribe(topic, qos=1)
        with self.cond:
            assert self.cond.wait_for(lambda: mid in self.subacks, WAIT), "no SUBACK"
            return not self.subacks[mid][0].is_failure

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        with self.cond:
            assert self.cond.wait_for(lambda: info.mid in self.acked, WAIT), "no PUBACK"

    def wait_for(self, payload: bytes) -> list[tuple[str, bytes, bool]]:
        """Everything received up to and including `payload`; fails if it does not come."""
        got = []
        deadline = time.monotonic() + WAIT
        while True:
            try:
                msg = self.msgs.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty as e:
                raise AssertionError(f"{payload!r} never arrived; got {got}") from e
            got.append(msg)
            if msg[1] == payload:
                return got

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[BrokerConfig, Broker, list[Client]]]:
    port = free_port()
    (tmp_path / "data").mkdir()
    cfg = write_broker_config(
        tmp_path / "broker", tmp_path / "data" / "broker-credentials.json", DEVICES,
        listeners=[parse_listener(f"mqtt://127.0.0.1:{port}")],
        run_as="root" if os.geteuid() == 0 else None,
    )
    broker = Broker(cfg)
    broker.start()
    clients: list[Client] = []
    try:
        yield cfg, broker, clients
    finally:
        for c in clients:
            c.close()
        broker.stop()


def client(setup: tuple[BrokerConfig, Broker, list[Client]], user: str | None,
           password: str | None = None, **kw: object) -> Client:
    cfg, _, clients = setup
    if user is not None and password is None:
        password = cfg.creds.password_for(user)
    c = Client(cfg.listeners[0].port, user, password, **kw)  # type: ignore[arg-type]
    clients.append(c)
    return c


def connected(setup: tuple[BrokerConfig, Broker, list[Client]], user: str, **kw: object) -> Client:
    c = client(setup, user, **kw)
    rc = c.connect()
    assert not rc.is_failure, f"{user} refused: {rc}"
    return c


def test_our_hash_is_mosquittos_format(tmp_path: Path) -> None:
    """mosquitto_passwd's own hash checks with our code, and our hash with the same salt is it."""
    pw = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), "alice", "s3cret"], check=True)
    line = pw.read_text().strip()
    user, encoded = line.split(":", 1)
    assert user == "alice" and encoded.startswith("$7$")
    assert check_password(encoded, "s3cret")
    assert not check_password(encoded, "s3creT")
    _, _, iters, salt, _ = encoded.split("$")
    import base64

    assert hash_password("s3cret", base64.b64decode(salt), int(iters)) == encoded


def test_wrong_unknown_and_anonymous_clients_are_refused(setup) -> None:
    cfg = setup[0]
    assert client(setup, "dev-a", "wrong-password").connect().is_failure
    assert client(setup, "dev-a", cfg.creds.password_for("dev-b")).connect().is_failure
    assert client(setup, "nobody", "whatever").connect().is_failure
    assert client(setup, None).connect().is_failure
    assert not client(setup, "dev-a").connect().is_failure


def test_device_cannot_publish_to_another_devices_topics(setup) -> None:
    gw = connected(setup, "iot-anchor-gateway")
    assert gw.subscribe("anchor/+/readings") and gw.subscribe("anchor/+/status")
    a = connected(setup, "dev-a")
    a.publish("anchor/dev-b/readings", b"forged-b")
    a.publish("anchor/dev-b/status", b"forged-status")
    a.publish("anchor/dev-a/readings", b"ok-a")
    got = gw.wait_for(b"ok-a")
    assert got == [("anchor/dev-a/readings", b"ok-a", False)]
    a.publish("anchor/dev-a/status", b"online")
    assert gw.wait_for(b"online") == [("anchor/dev-a/status", b"online", False)]
    # The gateway does read dev-b's topics: dev-b's own publish arrives.
    b = connected(setup, "dev-b")
    b.publish("anchor/dev-b/readings", b"ok-b")
    assert gw.wait_for(b"ok-b") == [("anchor/dev-b/readings", b"ok-b", False)]


def test_device_cannot_read_another_devices_ack(setup) -> None:
    """Mosquitto 2.0.11's ACL file does not refuse the SUBSCRIBE itself (the SUBACK grants it);
    it checks `read` when it delivers, so nothing of dev-b's ever reaches dev-a."""
    a = connected(setup, "dev-a")
    assert a.subscribe("anchor/dev-a/ack")
    for topic in ("anchor/dev-b/ack", "anchor/dev-b/readings", "anchor/dev-b/status",
                  "anchor/+/ack", "anchor/+/readings", "anchor/#", "#"):
        a.subscribe(topic)  # granted or refused, it must not deliver
    gw = connected(setup, "iot-anchor-gateway")
    b = connected(setup, "dev-b")
    b.publish("anchor/dev-b/readings", b"reading-of-b")
    b.publish("anchor/dev-b/status", b"status-of-b")
    gw.publish("anchor/dev-b/ack", b"ack-for-b")
    gw.publish("anchor/dev-a/ack", b"ack-for-a")
    got = a.wait_for(b"ack-for-a")
    # dev-a holds several overlapping subscriptions: the broker may deliver its own ack once
    # per matching subscription, but nothing else.
    assert {(t, p) for t, p, _ in got} == {("anchor/dev-a/ack", b"ack-for-a")}, got
    time.sleep(0.3)
    assert a.msgs.empty() or all(m[0] == "anchor/dev-a/ack" for m in list(a.msgs.queue))


def test_only_the_gateway_publishes_acks_and_checkpoints(setup) -> None:
    gw = connected(setup, "iot-anchor-gateway")
    gw.publish("anchor/checkpoint", b"real-checkpoint", retain=True)
    a = connected(setup, "dev-a")
    b = connected(setup, "dev-b")
    assert b.subscribe("anchor/dev-b/ack") and b.subscribe("anchor/checkpoint")
    assert b.wait_for(b"real-checkpoint") == [("anchor/checkpoint", b"real-checkpoint", True)]
    a.publish("anchor/dev-b/ack", b"forged-ack")
    a.publish("anchor/dev-a/ack", b"forged-own-ack")
    a.publish("anchor/checkpoint", b"forged-checkpoint", retain=True)
    b.publish("anchor/dev-b/ack", b"self-ack")
    gw.publish("anchor/dev-b/ack", b"gateway-ack")
    got = b.wait_for(b"gateway-ack")
    assert got == [("anchor/dev-b/ack", b"gateway-ack", False)]
    # The retained checkpoint is still the gateway's (for a new subscriber; one connection per
    # username, so dev-b connects again).
    b.close()
    c = connected(setup, "dev-b")
    assert c.subscribe("anchor/checkpoint")
    assert c.wait_for(b"real-checkpoint") == [("anchor/checkpoint", b"real-checkpoint", True)]
    # And the device's forged own ack never reached it either.
    assert a.subscribe("anchor/dev-a/ack")
    gw.publish("anchor/dev-a/ack", b"gateway-ack-a")
    assert a.wait_for(b"gateway-ack-a") == [("anchor/dev-a/ack", b"gateway-ack-a", False)]


def test_a_device_cannot_take_over_the_gateways_session(setup) -> None:
    """The gateway's client id is public (it is derived from the gateway key id, which every
    checkpoint names). A device connecting with it must not kick the gateway off nor take its
    persistent session: the broker uses each client's username as its client id."""
    gw_id = "iot-anchor-gw-0123456789abcdef"
    gw = connected(setup, "iot-anchor-gateway", client_id=gw_id)
    assert gw.subscribe("anchor/+/readings")
    thief = connected(setup, "dev-a", client_id=gw_id)
    thief.subscribe("anchor/+/readings")
    b = connected(setup, "dev-b")
    b.publish("anchor/dev-b/readings", b"still-delivered")
    assert gw.wait_for(b"still-delivered") == [("anchor/dev-b/readings", b"still-delivered",
                                                False)]
    assert gw.disconnects == 0 and thief.msgs.empty()


def test_a_subscriber_that_holds_its_pubacks_is_not_throttled(setup) -> None:
    """The gateway PUBACKs a reading only after its batch commits: the broker must keep
    delivering meanwhile (Mosquitto's default would stop at 20 unacknowledged messages)."""
    cfg = setup[0]
    got: queue.Queue[int] = queue.Queue()
    gw = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="held-pubacks",
                     protocol=mqtt.MQTTv311, manual_ack=True, clean_session=False)
    gw.username_pw_set(cfg.creds.gateway_user, cfg.creds.gateway_password)
    subscribed = threading.Event()
    gw.on_connect = lambda c, u, f, rc, p: c.subscribe("anchor/+/readings", qos=1)
    gw.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    gw.on_message = lambda c, u, m: got.put(m.mid)  # and no ack
    gw.connect("127.0.0.1", cfg.listeners[0].port, keepalive=30)
    gw.loop_start()
    try:
        assert subscribed.wait(WAIT)
        a = connected(setup, "dev-a")
        for i in range(100):
            a.publish("anchor/dev-a/readings", b"r%d" % i)
        deadline = time.monotonic() + WAIT
        mids = set()
        while len(mids) < 100 and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                mids.add(got.get(timeout=0.1))
        assert len(mids) == 100, f"only {len(mids)} delivered without PUBACKs"
    finally:
        gw.disconnect()
        gw.loop_stop()


def _connect_packet(client_id: str, user: str, password: str, will_topic: str,
                    will: bytes) -> bytes:
    """A raw MQTT 3.1.1 CONNECT with a QoS 0 will (so that we can drop the TCP link)."""
    def s(b: bytes) -> bytes:
        return len(b).to_bytes(2, "big") + b

    flags = 0x80 | 0x40 | 0x04 | 0x02  # user, password, will, clean session
    body = s(b"MQTT") + bytes([4, flags]) + (60).to_bytes(2, "big")
    body += s(client_id.encode()) + s(will_topic.encode()) + s(will)
    body += s(user.encode()) + s(password.encode())
    assert len(body) < 128
    return bytes([0x10, len(body)]) + body


def test_a_device_will_only_lands_on_its_own_status(setup) -> None:
    cfg = setup[0]
    gw = connected(setup, "iot-anchor-gateway")
    assert gw.subscribe("anchor/+/status")
    for topic, payload in (("anchor/dev-b/status", b"forged-will"),
                           ("anchor/dev-a/ack", b"forged-will-ack"),
                           ("anchor/dev-a/status", b"offline")):
        sock = socket.create_connection(("127.0.0.1", cfg.listeners[0].port), timeout=WAIT)
        sock.sendall(_connect_packet(f"will-{uuid.uuid4().hex[:6]}", "dev-a",
                                     cfg.creds.devices["dev-a"], topic, payload))
        assert sock.recv(4) == b"\x20\x02\x00\x00"  # CONNACK accepted
        sock.close()  # no DISCONNECT: the broker publishes the will
    got = gw.wait_for(b"offline")
    assert got == [("anchor/dev-a/status", b"offline", False)]
    time.sleep(0.3)
    assert gw.msgs.empty(), list(gw.msgs.queue)


def test_revoked_device_is_refused_after_reload(setup, tmp_path: Path) -> None:
    cfg, broker, _ = setup
    old_b = cfg.creds.devices["dev-b"]
    a = connected(setup, "dev-a")
    a.close()
    # dev-b is revoked: the registry no longer lists it; a new device dev-c appears.
    cfg2 = write_broker_config(
        cfg.conf.parent, cfg.credentials, ["dev-a", "dev-c"], listeners=cfg.listeners,
        run_as="root" if os.geteuid() == 0 else None,
    )
    assert cfg2.removed_users == ["dev-b"] and cfg2.new_users == ["dev-c"]
    assert cfg2.creds.devices["dev-a"] == cfg.creds.devices["dev-a"]  # kept
    broker.reload()  # SIGHUP: Mosquitto re-reads the password and ACL files
    deadline = time.monotonic() + WAIT
    while not client(setup, "dev-b", old_b).connect().is_failure:
        assert time.monotonic() < deadline, "dev-b still accepted after the reload"
        time.sleep(0.1)
    c = client(setup, "dev-c", cfg2.creds.devices["dev-c"])
    assert not c.connect().is_failure
    gw = connected(setup, "iot-anchor-gateway")
    assert gw.subscribe("anchor/+/readings")
    c.publish("anchor/dev-c/readings", b"from-c")
    assert gw.wait_for(b"from-c") == [("anchor/dev-c/readings", b"from-c", False)]


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "iot-anchor test broker")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "server.crt", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_listener(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    port = free_port()
    (tmp_path / "data").mkdir()
    cfg = write_broker_config(
        tmp_path / "broker", tmp_path / "data" / "broker-credentials.json", ["dev-a"],
        listeners=[parse_listener(f"mqtts://127.0.0.1:{port}")],
        tls=TlsFiles(cert, key), run_as="root" if os.geteuid() == 0 else None,
    )
    assert cfg.url_for("dev-a").startswith("mqtts://dev-a:")
    broker = Broker(cfg)
    broker.start()
    clients: list[Client] = []
    try:
        a = Client(port, "dev-a", cfg.creds.devices["dev-a"], tls_ca=cert)
        clients.append(a)
        assert not a.connect().is_failure
        gw = Client(port, "iot-anchor-gateway", cfg.creds.gateway_password, tls_ca=cert)
        clients.append(gw)
        assert not gw.connect().is_failure
        assert gw.subscribe("anchor/+/readings")
        a.publish("anchor/dev-a/readings", b"over-tls")
        assert gw.wait_for(b"over-tls") == [("anchor/dev-a/readings", b"over-tls", False)]
        bad = Client(port, "dev-a", "wrong", tls_ca=cert)
        clients.append(bad)
        assert bad.connect().is_failure
        # Plain MQTT on the TLS port gets no CONNACK.
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(_connect_packet("plain", "dev-a", cfg.creds.devices["dev-a"],
                                         "anchor/dev-a/status", b"x"))
            try:
                answer = sock.recv(4)
            except (TimeoutError, ConnectionResetError):
                answer = b""
            assert answer[:1] != b"\x20"
    finally:
        for c in clients:
            try:
                c.close()
            except Exception:
                pass
        broker.stop()


def test_cli_writes_files_keeps_passwords_and_shows_urls(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    args = ["broker-config", "--data", str(data), "--listener", "mqtt://127.0.0.1:18830",
            "--device", "dev-a", "--device", "dev-b"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    creds_path = data / "broker-credentials.json"
    assert oct(creds_path.stat().st_mode & 0o777) == "0o600"
    creds = load_credentials(creds_path)
    assert creds is not None and sorted(creds.devices) == ["dev-a", "dev-b"]
    conf = (data / "broker" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "listener 18830 127.0.0.1" in conf
    assert "\nmax_inflight_messages 0\n" in conf  # the gateway holds PUBACKs until a commit
    assert str(data / "broker" / "mosquitto.conf") in out
    for secret in (creds.gateway_password, *creds.devices.values()):
        assert secret not in out  # passwords are never printed unless asked for
    passwd = (data / "broker" / "passwd").read_text().splitlines()
    assert [line.split(":")[0] for line in passwd] == ["iot-anchor-gateway", "dev-a", "dev-b"]
    for line in passwd:
        user, encoded = line.split(":", 1)
        assert check_password(encoded, creds.password_for(user) or "")
    # Again, with --rotate dev-b: dev-a and the gateway keep theirs.
    assert cli_main([*args, "--rotate", "dev-b"]) == 0
    creds2 = load_credentials(creds_path)
    assert creds2 is not None
    assert creds2.devices["dev-a"] == creds.devices["dev-a"]
    assert creds2.gateway_password == creds.gateway_password
    assert creds2.devices["dev-b"] != creds.devices["dev-b"]
    capsys.readouterr()
    assert cli_main(["broker-config", "--data", str(data), "--show", "dev-b"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"mqtt://dev-b:{creds2.devices['dev-b']}@127.0.0.1:18830")
    # Bad input: one error line that says what to do.
    assert cli_main(["broker-config", "--data", str(data), "--device", "a/b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: device id 'a/b'") and "use 1 to 128 characters" in err
    assert cli_main(["broker-config", "--data", str(data), "--listener", "mqtts://h:1",
                     "--device", "x"]) == 2
    assert "--tls-cert" in capsys.readouterr().err


def test_cli_takes_the_active_devices_from_the_registry(tmp_path: Path, capsys) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = tmp_path / "data"
    assert cli_main(["init", "--data", str(data)]) == 0
    for dev in ("dev-a", "dev-b", "dev-c"):
        point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        assert cli_main(["device", "add", dev, "--public-key", point.hex(), "--data",
                         str(data)]) == 0
    assert cli_main(["broker-config", "--data", str(data)]) == 0
    creds = load_credentials(data / "broker-credentials.json")
    assert creds is not None and sorted(creds.devices) == ["dev-a", "dev-b", "dev-c"]
    assert cli_main(["device", "revoke", "dev-b", "--data", str(data)]) == 0
    capsys.readouterr()
    assert cli_main(["broker-config", "--data", str(data)]) == 0
    assert "removed (no longer registered or active): dev-b" in capsys.readouterr().out
    creds2 = load_credentials(data / "broker-credentials.json")
    assert creds2 is not None and sorted(creds2.devices) == ["dev-a", "dev-c"]
    assert creds2.devices["dev-a"] == creds.devices["dev-a"]
    acl = (data / "broker" / "acl").read_text()
    assert "dev-b" not in acl and "user dev-c" in acl
    assert "dev-b:" not in (data / "broker" / "passwd").read_text()


@pytest.mark.slow
def test_gateway_and_firmware_devices_through_the_acl_broker(tmp_path: Path,
                                                              micropython: str) -> None:
    """The whole system behind broker-config's broker: real firmware devices and the gateway,
    each with its own password from DATA/broker-credentials.json, passed in the URL."""
    from faults import GatewayProc, status, verify

    from gateway.cli.broker_config import registered_devices
    from gateway.sim.simulate import MicroPythonFleet
    from gateway.storage.store import Store

    data = tmp_path / "data"
    _, vkey = Store.create(data)
    fleet = MicroPythonFleet(tmp_path / "fleet", 2, prefix="acl")
    assert fleet.prepare(data) == 2
    cfg = write_broker_config(
        tmp_path / "broker", data / "broker-credentials.json", registered_devices(data),
        listeners=[parse_listener(f"mqtt://127.0.0.1:{free_port()}")],
        run_as="root" if os.geteuid() == 0 else None,
    )
    broker = Broker(cfg)
    broker.start()
    gw_url = cfg.url_for(cfg.creds.gateway_user)
    gw = GatewayProc(data, None, tmp_path / "gateway.log", "--batch-interval", "0.2",
                     env=dict(os.environ, IOT_ANCHOR_BROKER=gw_url))
    try:
        gw.start(timeout=10)
        for d in fleet.devices:
            fleet.start_one(d, cfg.url_for(d.dev), 0.1, 5, ("--ack-timeout", "2",
                                                            "--timeout", "30"))
        fleet.wait(time.monotonic() + 60)
        for d in fleet.devices:
            assert d.proc is not None and d.proc.returncode == 0, d.log.read_text()[-2000:]
        assert gw.stop() == 0
        st = status(data)
        assert st["readings"] == 10 and st["rejected"] == {}
        assert verify(data, vkey).returncode == 0
        # No password in any log.
        secrets = [cfg.creds.gateway_password, *cfg.creds.devices.values()]
        for log in [gw.log, *(d.log for d in fleet.devices)]:
            text = log.read_text()
            assert not any(s in text for s in secrets), f"a password shows in {log}"
    finally:
        fleet.stop()
        gw.cleanup()
        broker.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="checks the hand-over of the files when run as root")
def test_as_root_the_files_go_to_the_mosquitto_user(tmp_path: Path) -> None:
    """Started as root, Mosquitto switches to the 'mosquitto' user before it reads the password
    file: the files must belong to that user, which broker-config arranges when run as root."""
    import pwd
    import shutil
    import tempfile

    try:
        owner = pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no 'mosquitto' user on this machine")
    out = Path(tempfile.mkdtemp(prefix="iot-anchor-brokerconf-"))  # not under pytest's 0700 dir
    try:
        out.chmod(0o755)
        (tmp_path / "data").mkdir()
        cfg = write_broker_config(
            out / "broker", tmp_path / "data" / "broker-credentials.json", ["dev-a"],
            listeners=[parse_listener(f"mqtt://127.0.0.1:{free_port()}")],
        )
        for p in (cfg.passwd, cfg.acl, cfg.conf, out / "broker" / "persist"):
            assert p.stat().st_uid == owner.pw_uid, p
        assert oct(cfg.passwd.stat().st_mode & 0o777) == "0o600"
        assert "\nuser " not in cfg.conf.read_text()  # Mosquitto's own default: drop to mosquitto
        broker = Broker(cfg)
        broker.start()
        try:
            c = Client(cfg.listeners[0].port, "dev-a", cfg.creds.devices["dev-a"])
            assert not c.connect().is_failure
            c.close()
            assert client_refused(cfg.listeners[0].port, "dev-a", "wrong")
        finally:
            broker.stop()
    finally:
        shutil.rmtree(out, ignore_errors=True)


def client_refused(port: int, user: str, password: str) -> bool:
    c = Client(port, user, password)
    try:
        return c.connect().is_failure
    finally:
        c.close()
