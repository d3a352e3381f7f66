"""The downlink on the gateway's side: formats (gateway/wire/downlink.py), the Downlink's keys
and counters (gateway/downlink/channel.py), the key file and the durable epoch."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.cli import main as cli_main
from gateway.downlink import Downlink
from gateway.errors import ConfigError
from gateway.fleet import registry
from gateway.storage import downlink_keyfile
from gateway.storage.store import Store
from gateway.wire import downlink as wire
from gateway.wire.downlink import Command, DownlinkError
from gateway.wire.signer import DeviceSigner

GW = ec.derive_private_key(0xBEEF, ec.SECP256R1())


def _pub(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.X962,
                                         serialization.PublicFormat.UncompressedPoint)


def test_seal_and_open_and_every_refusal() -> None:
    k = bytes(range(32))
    topic = "anchor/d1/ack"
    msg = wire.seal(k, topic, wire.ack_payload(7, 3, [5], 2))
    # the layout: 17([h'a10105', {}, payload, tag]), and the tag over MAC_structure
    tag = cbor2.loads(msg)
    assert tag.tag == 17 and tag.value[0] == b"\xa1\x01\x05" and tag.value[1] == {}
    import hmac

    mac0 = cbor2.dumps(["MAC0", b"\xa1\x01\x05", topic.encode(), tag.value[2]])
    assert tag.value[3] == hmac.digest(k, mac0, "sha256")
    assert wire.decode_ack_payload(wire.open_sealed(k, topic, msg)) == (7, 3, [5], 2)
    for bad_key, bad_topic, bad_msg, reason in (
            (bytes(32), topic, msg, "forged"),
            (k, "anchor/d2/ack", msg, "forged"),
            (k, "anchor/d1/cmd", msg, "forged"),
            (k, topic, msg[:-1] + bytes([msg[-1] ^ 1]), "forged"),
            (k, topic, msg[:-1], "malformed"),
            (k, topic, msg + b"\x00", "malformed"),
            (k, topic, b"", "malformed"),
            (k, topic, cbor2.dumps({"upto": 3}), "malformed")):
        with pytest.raises(DownlinkError) as e:
            wire.open_sealed(bad_key, bad_topic, bad_msg)
        assert e.value.reason == reason


def test_commands_validate_like_the_firmware_runs_them() -> None:
    for op, args in (("interval", {"seconds": 5}), ("output", {"name": "fan-1", "on": True}),
                     ("ping", {})):
        wire.validate_command(op, args)
        c = Command("d", 3, op, args)
        ctr, back = wire.decode_command_payload("d", wire.command_payload(9, c))
        assert ctr == 9 and back == c
    for op, args, words in (("reboot", {}, "unknown command"),
                            ("interval", {"seconds": 0}, "seconds"),
                            ("interval", {"seconds": True}, "seconds"),
                            ("interval", {"seconds": 1, "x": 1}, "seconds"),
                            ("output", {"name": "a/b", "on": True}, "name"),
                            ("output", {"name": "x" * 33, "on": True}, "name"),
                            ("output", {"name": "fan", "on": 1}, "on"),
                            ("ping", {"x": 1}, "no args")):
        with pytest.raises(ValueError, match=words):
            wire.validate_command(op, args)
    with pytest.raises(ValueError):
        Command("d", -1, "ping")


def _signed_confirmation(signer: DeviceSigner, payload: dict[str, object]) -> bytes:
    return signer.sign_payload(cbor2.dumps(payload, canonical=True))


def test_downlink_seals_per_device_with_growing_counters_and_checks_confirmations(
        tmp_path: Path) -> None:
    devs = {d: DeviceSigner.generate(d) for d in ("a", "b")}
    epochs = iter([10, 11])
    dl = Downlink(GW, lambda d: devs[d].public_key if d in devs else None, lambda: next(epochs))
    ka = wire.device_key(ec.derive_private_key(int.from_bytes(devs["a"].secret, "big"),
                                               ec.SECP256R1()).exchange(ec.ECDH(),
                                                                        GW.public_key()), "a")
    assert dl.mac_key("a") == ka
    ctrs = [wire.decode_ack_payload(wire.open_sealed(ka, "anchor/a/ack",
                                                     dl.seal_ack("a", i, [], i)))[0]
            for i in range(3)]
    assert ctrs == [(10 << 32) + 1, (10 << 32) + 2, (10 << 32) + 3]
    cmd = wire.open_sealed(ka, "anchor/a/cmd", dl.seal_command(Command("a", 5, "ping")))
    assert wire.decode_command_payload("a", cmd) == ((10 << 32) + 4, Command("a", 5, "ping"))
    # b has its own key and its own count
    with pytest.raises(DownlinkError):
        wire.open_sealed(ka, "anchor/b/ack", dl.seal_ack("b", 0, [], 0))
    with pytest.raises(ConfigError):
        dl.seal_ack("nobody", 0, [], 0)
    # a confirmation: verified against the registered key
    good = {"v": 1, "dev": "a", "cmd": 5, "op": "ping", "ok": True, "result": {"seq": 3}}
    c = dl.verify_confirmation("a", _signed_confirmation(devs["a"], good))
    assert (c.device, c.id, c.op, c.ok, c.result, c.reason) == ("a", 5, "ping", True,
                                                                 {"seq": 3}, "")
    failed = dict(good, ok=False, reason="no output fan")
    del failed["result"]
    assert dl.verify_confirmation("a", _signed_confirmation(devs["a"], failed)).reason == \
        "no output fan"
    for dev, msg, reason in (
            ("a", _signed_confirmation(devs["b"], good), "wrong_device"),   # b's kid
            ("b", _signed_confirmation(devs["b"], good), "malformed"),      # dev says a
            ("nobody", _signed_confirmation(devs["a"], good), "unknown_device"),
            ("a", b"\x00", "malformed"),
            ("a", _signed_confirmation(devs["a"], {"v": 1}), "malformed")):
        with pytest.raises(DownlinkError) as e:
            dl.verify_confirmation(dev, msg)
        assert e.value.reason == reason, (dev, reason, e.value)
    # another key with a's kid: the signature does not hold
    forged = DeviceSigner("a", DeviceSigner.generate("a").secret)
    with pytest.raises(DownlinkError) as e:
        dl.verify_confirmation("a", _signed_confirmation(forged, good))
    assert e.value.reason == "bad_signature"


def test_a_rotated_device_key_gives_a_new_mac_key(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = {"a": DeviceSigner.generate("a").public_key}
    dl = Downlink(GW, keys.get, lambda: 1)
    k1 = dl.mac_key("a")
    keys["a"] = DeviceSigner.generate("a").public_key
    assert dl.mac_key("a") == k1        # cached for KEY_RECHECK_S
    t = time.monotonic() + 10
    monkeypatch.setattr(time, "monotonic", lambda: t)
    assert dl.mac_key("a") != k1


def test_store_epoch_grows_and_the_key_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert cli_main(["init", "--data", str(data)]) == 0
    p = data / downlink_keyfile.DOWNLINK_KEY_NAME
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    key = downlink_keyfile.load_or_create(data)
    assert downlink_keyfile.load_or_create(data).private_numbers() == key.private_numbers()
    with Store.open(data) as s:
        now = int(time.time())
        e1 = s.downlink_epoch(now)
        e2 = s.downlink_epoch(now)      # the same second: still above
        e3 = s.downlink_epoch(0)        # a clock gone back: still above
        assert e1 >= now and e1 < e2 < e3
    # the service's Downlink counts above every earlier start
    d1 = Downlink.open(data)
    d2 = Downlink.open(data)
    dev = DeviceSigner.generate("e")
    with Store.open(data) as s:
        registry.add(s, dev.dev, dev.public_key)
    k = d1.mac_key(dev.dev)  # one MAC key for both: the same gateway key
    first, second = (wire.decode_ack_payload(wire.open_sealed(k, "anchor/e/ack", d.seal_ack(
        "e", 0, [], 0)))[0] for d in (d1, d2))
    assert second >> 32 > first >> 32  # the later start's epoch is above the earlier one's
    d1.close()
    d2.close()
    os.chmod(p, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        downlink_keyfile.load_or_create(data)
    # a data directory made before the downlink: the key is made on first use
    p.unlink()
    assert cli_main(["downlink", "key", "--data", str(data)]) == 0
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert _pub(downlink_keyfile.load_or_create(data)) != _pub(key)


class _Window:
    """The firmware's replay window (firmware/anchor/device.py, Loop.fresh), for the test."""

    def __init__(self) -> None:
        self.top, self.seen = -1, 0

    def fresh(self, c: int) -> str:
        if c > self.top:
            s = c - self.top
            self.seen = ((self.seen & (0x3FFFFFFF >> s)) << s | 1) if s < 30 else 1
            self.top = c
            return "ok"
        d = self.top - c
        if d >= 30:
            return "stale"
        if self.seen >> d & 1:
            return "replayed"
        self.seen |= 1 << d
        return "ok"


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_shared_gateways_give_a_device_one_growing_counter(
        tmp_path: Path, engine: str, request: pytest.FixtureRequest) -> None:
    """`run --shared`: the group's gateways take each device's counters from the store, so
    a device that hears from all of them accepts every message (none stale, none replayed);
    separate per-process counters would sit whole epochs apart."""
    url = request.getfixturevalue("pg_url") if engine == "postgresql" else None
    s, _ = Store.create(tmp_path / "d", url)
    s.close()
    devs = {d: DeviceSigner.generate(d) for d in ("a", "b")}
    opened: list[Store] = []

    def gateway(shared: bool) -> Downlink:
        st = Store.open(tmp_path / "d", store=url)
        opened.append(st)
        return Downlink(GW, lambda d: devs[d].public_key, lambda: st.downlink_epoch(1000),
                        shared_counters=st.next_downlink_counters if shared else None)

    k = {d: Downlink(GW, lambda x: devs[x].public_key, lambda: 1).mac_key(d) for d in devs}
    windows = {d: _Window() for d in devs}

    def deliver(dl: Downlink, dev: str) -> str:
        if dl.shared:
            dl.reserve([dev])
        ctr = wire.decode_ack_payload(wire.open_sealed(k[dev], f"anchor/{dev}/ack",
                                                       dl.seal_ack(dev, 0, [], 0)))[0]
        return windows[dev].fresh(ctr)

    g1, g2 = gateway(True), gateway(True)
    assert [deliver(g, d) for g in (g1, g2, g2, g1, g2, g1) for d in ("a", "b")] == ["ok"] * 12
    # reserved in one order, sealed in another (two gateways' rounds overlapping): accepted
    g1.reserve(["a"])
    g2.reserve(["a"])
    assert deliver(g2, "a") == "ok" and deliver(g1, "a") == "ok"
    # a gateway started later (a restart: a new epoch) moves the device's counters up for all
    g3 = gateway(True)
    assert deliver(g3, "a") == "ok" and deliver(g1, "a") == "ok" and deliver(g2, "a") == "ok"
    newest = opened[-1].query("SELECT value FROM meta WHERE key = 'downlink_epoch'")[0][0]
    assert windows["a"].top >> 32 == int(newest)  # g3's epoch, the newest
    # sealing without a reserved counter is refused before anything is sent
    with pytest.raises(ConfigError, match="no downlink counter reserved"):
        g1.seal_ack("b", 0, [], 0)
    assert g1.missing(["a", "b"]) == ["a", "b"]
    # what per-process counters did to a shared device: the lower epoch is stale
    p1, p2 = gateway(False), gateway(False)
    w = _Window()
    got = [w.fresh(wire.decode_ack_payload(wire.open_sealed(
        k["b"], "anchor/b/ack", p.seal_ack("b", 0, [], 0)))[0]) for p in (p2, p1)]
    assert got == ["ok", "stale"]
    for st in opened:
        st.close()
