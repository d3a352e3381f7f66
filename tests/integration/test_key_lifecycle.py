"""Key rotation and revocation, through the command line (`iot-anchor` as a subprocess).

Rotation: `device rotate` records the new key in the ledger; readings anchored before it still
verify (`ledger verify`, and receipts offline) against the key valid at their time, readings
after it need the new key. Revocation: `device revoke` refuses every later reading, while the
earlier ones stay verifiable. The key history itself is covered by the audit: rewriting it in
the database is detected.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from helpers_readings import Device

from gateway.ledger.entry import DeviceEntry, decode_entry

CLI = [sys.executable, "-m", "gateway"]


def iot(data: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*CLI, *args, "--data", str(data)], capture_output=True, text=True,
                          timeout=120)
    if ok:
        assert proc.returncode == 0, f"{args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def ingest(data: Path, tmp: Path, msgs: list[bytes]) -> dict:
    f = tmp / "in.hex"
    f.write_text("".join(m.hex() + "\n" for m in msgs))
    return json.loads(iot(data, "ingest", str(f), "--json").stdout)


def receipt_ok(data: Path, tmp: Path, vkey: str, dev: str, seq: int, key_hex: str) -> bool:
    r = tmp / f"receipt-{dev}-{seq}.json"
    r.write_text(iot(data, "receipt", dev, str(seq)).stdout)
    proc = subprocess.run([*CLI, "verify-receipt", str(r), "--gateway-key", vkey,
                           "--device-key", key_hex], capture_output=True, text=True, timeout=60)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode == 0


def device_entries(data: Path) -> list[DeviceEntry]:
    with sqlite3.connect(f"file:{data / 'ledger.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT body FROM entries WHERE kind = 'device' ORDER BY i").fetchall()
    out = [decode_entry(bytes(b)) for (b,) in rows]
    assert all(isinstance(e, DeviceEntry) for e in out)
    return out  # type: ignore[return-value]


def test_rotation_and_revocation(tmp_path: Path) -> None:
    data = tmp_path / "data"
    vkey = iot(data, "init").stdout.strip().splitlines()[-1]
    dev = Device("sensor-1")
    old_key = dev.public_hex
    other = Device("sensor-2")
    iot(data, "device", "add", dev.id, "--public-key", old_key)
    iot(data, "device", "add", other.id, "--public-key", other.public_hex)

    # 10 readings under the first key.
    first = dev.readings(10)
    s = ingest(data, tmp_path, first + other.readings(3))
    assert s["accepted"] == 13, s

    # Rotate: a new key pair on the device, the new public key in the registry and the ledger.
    old_private = dev.key
    from cryptography.hazmat.primitives.asymmetric import ec

    dev.key = ec.generate_private_key(ec.SECP256R1())
    new_key = dev.public_hex
    iot(data, "device", "rotate", dev.id, "--public-key", new_key)
    entries = device_entries(data)
    assert [(e.dev, e.action, e.key.hex()) for e in entries if e.dev == dev.id] == [
        (dev.id, "add", old_key), (dev.id, "rotate", new_key)]

    # After the rotation: new-key readings are anchored; a reading still signed with the old
    # key (say, left in the device's outbox) is refused, and so is the old key on a new seq.
    second = dev.readings(10)  # seq 10..19, new key
    stale_key = Device(dev.id, key=old_private, seq=dev.seq, prev=dev.prev)
    stale = stale_key.next()  # seq 20 under the old key
    s = ingest(data, tmp_path, second + [stale])
    assert s["accepted"] == 10 and s["rejected"] == {"bad_signature": 1}, s
    assert iot(data, "ledger", "verify", "--gateway-key", vkey).returncode == 0

    # Old readings verify against the key valid at their time, new ones against the new key.
    assert receipt_ok(data, tmp_path, vkey, dev.id, 3, old_key)
    assert not receipt_ok(data, tmp_path, vkey, dev.id, 3, new_key)
    assert receipt_ok(data, tmp_path, vkey, dev.id, 15, new_key)
    assert not receipt_ok(data, tmp_path, vkey, dev.id, 15, old_key)

    # Revoke: later readings are refused, whatever key signed them; earlier ones still verify.
    iot(data, "device", "revoke", dev.id)
    assert [e.action for e in device_entries(data) if e.dev == dev.id] == [
        "add", "rotate", "revoke"]
    late = dev.readings(5)
    s = ingest(data, tmp_path, late + other.readings(2))
    assert s["accepted"] == 2 and s["rejected"] == {"revoked_device": 5}, s
    status = json.loads(iot(data, "ledger", "status", "--json").stdout)
    assert status["devices"][dev.id]["readings"] == 20
    assert status["devices"][dev.id]["last_seq"] == 19
    assert status["rejected"] == {"bad_signature": 1, "revoked_device": 5}
    assert iot(data, "ledger", "verify", "--gateway-key", vkey).returncode == 0
    assert receipt_ok(data, tmp_path, vkey, dev.id, 0, old_key)
    assert receipt_ok(data, tmp_path, vkey, dev.id, 19, new_key)

    # A revoked device stays revoked: no rotation, no re-registration under the same id.
    for args in (("device", "rotate", dev.id, "--public-key", Device("x").public_hex),
                 ("device", "add", dev.id, "--public-key", Device("x").public_hex)):
        proc = iot(data, *args, ok=False)
        assert proc.returncode == 2 and "revoked" in proc.stderr, proc.stderr
    listing = {d["id"]: d for d in json.loads(iot(data, "device", "list", "--json").stdout)}
    assert listing[dev.id]["status"] == "revoked" and listing[other.id]["status"] == "active"

    # An auditor with a copy of the database and only the gateway's public key: the copy holds
    # no private key, and `ledger verify` with the right vkey passes, with another one fails.
    copy = tmp_path / "copy"
    copy.mkdir()
    with sqlite3.connect(data / "ledger.db") as src, sqlite3.connect(copy / "ledger.db") as dst:
        src.backup(dst)
    assert sorted(p.name for p in copy.iterdir()) == ["ledger.db"]
    assert iot(copy, "ledger", "verify", "--gateway-key", vkey).returncode == 0
    other_vkey = iot(tmp_path / "other", "init").stdout.strip().splitlines()[-1]
    proc = iot(copy, "ledger", "verify", "--gateway-key", other_vkey, ok=False)
    assert proc.returncode == 1 and "BROKEN" in proc.stdout, proc.stdout + proc.stderr
    # A checkpoint saved earlier (as devices receive them) is still in the copy, byte for byte.
    saved = status["checkpoint"]
    size = int(saved.splitlines()[1])
    with sqlite3.connect(copy / "ledger.db") as db:
        (note_then,) = db.execute("SELECT note FROM checkpoints WHERE size = ?",
                                  (size,)).fetchone()
    assert note_then == saved

    # The key history cannot be rewritten quietly: give the new key to the old readings'
    # period in the database, and the audit names the difference.
    with sqlite3.connect(data / "ledger.db") as db:
        db.execute("UPDATE device_keys SET key = ? WHERE dev = ? AND key = ?",
                   (bytes.fromhex(new_key), dev.id, bytes.fromhex(old_key)))
    proc = iot(data, "ledger", "verify", "--gateway-key", vkey, ok=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "device_keys" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_rotation_and_revocation_while_the_gateway_runs(tmp_path: Path) -> None:
    """`device rotate` and `device revoke` from the command line while `iot-anchor run` is
    anchoring the device's readings over MQTT: the running gateway takes the change at once."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from faults import AckWatcher, GatewayProc, status, verify

    from gateway.sim.broker import PrivateBroker

    data = tmp_path / "data"
    vkey = iot(data, "init").stdout.strip().splitlines()[-1]
    dev = Device("live-1")
    iot(data, "device", "add", dev.id, "--public-key", dev.public_hex)
    with PrivateBroker(workdir=tmp_path / "broker") as broker:
        gw = GatewayProc(data, broker.url, tmp_path / "gateway.log", "--batch-interval", "0.1")
        watcher = AckWatcher(broker.port)
        import paho.mqtt.client as mqtt

        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="live-1-pub")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()

        def send(msgs: list[bytes]) -> None:
            for m in msgs:
                pub.publish(f"anchor/{dev.id}/readings", m, qos=1).wait_for_publish(10)

        try:
            gw.start()
            send(dev.readings(5))  # seq 0..4, first key
            assert watcher.wait_upto({dev.id: 4}, 20)
            old_key, old_private = dev.public_hex, dev.key
            dev.key = ec.generate_private_key(ec.SECP256R1())
            iot(data, "device", "rotate", dev.id, "--public-key", dev.public_hex)
            stale = Device(dev.id, key=old_private, seq=dev.seq, prev=dev.prev).next()
            send([stale])  # seq 5 under the old key: refused by the running gateway
            send(dev.readings(5))  # seq 5..9, new key
            assert watcher.wait_upto({dev.id: 9}, 20)
            iot(data, "device", "revoke", dev.id)
            send(dev.readings(3))  # seq 10..12: refused
            marker = Device("live-2")
            iot(data, "device", "add", marker.id, "--public-key", marker.public_hex)
            pub.publish(f"anchor/{marker.id}/readings", marker.next(), qos=1).wait_for_publish(10)
            assert watcher.wait_upto({marker.id: 0}, 20)  # everything before it was processed
            assert gw.stop() == 0
        finally:
            pub.loop_stop()
            watcher.close()
            gw.cleanup()
    st = status(data)
    assert st["devices"][dev.id]["readings"] == 10 and st["devices"][dev.id]["last_seq"] == 9
    assert st["rejected"] == {"bad_signature": 1, "revoked_device": 3}, st["rejected"]
    assert watcher.acked(dev.id) == set(range(10))
    assert verify(data, vkey).returncode == 0
    assert receipt_ok(data, tmp_path, vkey, dev.id, 2, old_key)
    assert receipt_ok(data, tmp_path, vkey, dev.id, 7, dev.public_hex)
