"""Hostile MQTT traffic against the running gateway (`iot-anchor run`, real Mosquitto).

A fuzzing client publishes at least 100,000 malformed or adversarial messages, interleaved with
valid readings from four registered devices, in rounds. Kinds (and the expected outcome):

- random bytes                                    -> a decoding reason
- mutated valid messages (flips, inserts, cuts)   -> a decoding reason or a signature reason
- replays of anchored readings                    -> duplicate (acknowledged again, not stored)
- equivocations: a second signed reading for an anchored (dev, seq) -> equivocation
- kid swaps: the protected header names another device      -> dev_kid_mismatch
- cross-device signatures: A's key on a reading claiming B  -> bad_signature
- oversized messages (2 KiB + 1 up to 64 KiB)               -> too_large
- high-S twins of valid readings                            -> high_s
- valid readings published on another device's topic        -> topic_mismatch
- readings of an unknown and of a revoked device           -> unknown_device, revoked_device

Every message's expected outcome is computed here, before it is sent, by an oracle that applies
the rules in order: strict decoding (gateway.wire.cose), topic device == dev, registered, active,
then the ES256 check with `cryptography` (r and s in range, low-S, valid). At the end the
gateway's counters (`ledger status --json`, "rejected") must equal the oracle's, reason by
reason; every valid reading is anchored exactly once; `ledger verify` passes; the gateway
process never died, and its resident memory stays flat from round to round.

The broker here is the open PrivateBroker: with the ACLs of `broker-config`, Mosquitto would
drop the cross-topic messages before the gateway saw them (tested in test_broker_acl.py).
"""

from __future__ import annotations

import collections
import json
import os
import random
import threading
import time
import uuid
from pathlib import Path

import cbor2
import paho.mqtt.client as mqtt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from faults import AckWatcher, GatewayProc, iot, status, verify
from helpers_readings import Device, N, high_s_twin

from gateway.sim.broker import PrivateBroker
from gateway.storage.store import Store
from gateway.wire.cose import MAX_MESSAGE, Rejection, decode

ROUNDS = 20
HOSTILE_PER_ROUND = 5_000
VALID_PER_DEVICE_PER_ROUND = 25
DEVICES = 4
SEED = int(os.environ.get("IOT_ANCHOR_FUZZ_SEED", "20261125"))
ROUND_TIMEOUT = 120.0


class Oracle:
    """The expected outcome of one message published on anchor/<topic_dev>/readings."""

    def __init__(self, keys: dict[str, ec.EllipticCurvePublicKey], revoked: set[str]) -> None:
        self.keys, self.revoked = keys, revoked
        self.anchored: dict[tuple[str, int], bytes] = {}  # what the gateway has acknowledged

    def outcome(self, msg: bytes, topic_dev: str) -> str:
        try:
            d = decode(msg, MAX_MESSAGE)
        except Rejection as r:
            return r.reason
        if d.dev != topic_dev:
            return "topic_mismatch"
        if d.dev not in self.keys:
            return "unknown_device"
        if d.dev in self.revoked:
            return "revoked_device"
        r = int.from_bytes(d.signature[:32], "big")
        s = int.from_bytes(d.signature[32:], "big")
        if not (0 < r < N and 0 < s < N):
            return "bad_signature"
        if s > N // 2:
            return "high_s"
        try:
            self.keys[d.dev].verify(encode_dss_signature(r, s), d.to_be_signed,
                                    ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return "bad_signature"
        stored = self.anchored.get((d.dev, d.seq))
        if stored is None:
            return "valid"
        return "duplicate" if stored == msg else "equivocation"


def mutate(rng: random.Random, msg: bytes) -> bytes:
    b = bytearray(msg)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(4)
        i = rng.randrange(len(b) + 1)
        if kind == 0 and b:
            b[min(i, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1:
            b[i:i] = rng.randbytes(rng.randint(1, 4))
        elif kind == 2:
            del b[i:i + rng.randint(1, 8)]
        else:
            del b[max(1, i):]
    return bytes(b)


def kid_swap(msg: bytes, other: str) -> bytes:
    """The same message with the protected header's kid replaced (signature left as is)."""
    tag = cbor2.loads(msg)
    protected, unprotected, payload, sig = tag.value
    new_protected = cbor2.dumps({1: -7, 4: other.encode()}, canonical=True)
    return cbor2.dumps(cbor2.CBORTag(18, [new_protected, unprotected, payload, sig]),
                       canonical=True)


class Publisher:
    """One paho client publishing QoS 1 as fast as the broker takes it."""

    def __init__(self, port: int) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"fuzzer-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)
        self.c.max_inflight_messages_set(1000)
        self.c.max_queued_messages_set(0)
        self.connected = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: self.connected.set()
        self.c.connect("127.0.0.1", port, keepalive=60)
        self.c.loop_start()
        assert self.connected.wait(10)

    def send(self, items: list[tuple[str, bytes]]) -> None:
        for topic_dev, payload in items:
            info = self.c.publish(f"anchor/{topic_dev}/readings", payload, qos=1)
            assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.slow
def test_hostile_mqtt_traffic(tmp_path: Path, broker: PrivateBroker) -> None:
    rng = random.Random(SEED)
    data = tmp_path / "data"
    store, vkey = Store.create(data)
    store.close()
    devices = [Device(f"dev-{k}") for k in range(DEVICES)]
    revoked = Device("dev-revoked")
    strangers = [Device(f"stranger-{k}") for k in range(3)]
    for d in [*devices, revoked]:
        assert iot("device", "add", d.id, "--public-key", d.public_hex,
                   "--data", str(data)).returncode == 0
    assert iot("device", "revoke", revoked.id, "--data", str(data)).returncode == 0
    oracle = Oracle({d.id: d.key.public_key() for d in [*devices, revoked]}, {revoked.id})
    # Pools signed once (signing is not what is being tested): unknown and revoked devices.
    unknown_pool = [s.next() for s in strangers for _ in range(20)]
    revoked_pool = [revoked.next() for _ in range(20)]
    ids = [d.id for d in devices]

    gw = GatewayProc(data, broker.url, tmp_path / "gateway.log", "--batch-interval", "0.2")
    watcher = AckWatcher(broker.port)
    pub: Publisher | None = None
    expected: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    anchored_pool: list[tuple[str, bytes]] = []  # (dev, message) acknowledged earlier
    rss: list[int] = []
    sent_hostile = sent_valid = 0
    try:
        gw.start()
        pub = Publisher(broker.port)
        t0 = time.monotonic()
        for rnd in range(ROUNDS):
            valid: list[tuple[str, bytes]] = []
            for _ in range(VALID_PER_DEVICE_PER_ROUND):
                for d in devices:
                    valid.append((d.id, d.next()))
            hostile: list[tuple[str, bytes, str]] = []  # (topic dev, message, kind)
            while len(hostile) < HOSTILE_PER_ROUND:
                kind = rng.choices(
                    ["random", "mutated", "replay", "equivocation", "kid_swap", "cross_sign",
                     "oversized", "high_s", "other_topic", "unknown", "revoked"],
                    weights=[22, 30, 8, 2, 5, 4, 3, 8, 8, 6, 4])[0]
                dev_id, msg = rng.choice(valid)
                other = rng.choice([i for i in ids if i != dev_id])
                if kind == "random":
                    item = (rng.choice([*ids, "ghost"]), rng.randbytes(rng.randint(0, 300)))
                elif kind == "mutated":
                    item = (dev_id, mutate(rng, msg))
                elif kind == "replay" and anchored_pool:
                    item = rng.choice(anchored_pool)
                elif kind == "equivocation" and anchored_pool:
                    dev_id, old = rng.choice(anchored_pool)
                    dev = devices[ids.index(dev_id)]
                    seq = decode(old).seq
                    item = (dev_id, dev.message(seq, decode(old).prev, {"t": rng.random()}))
                elif kind == "kid_swap":
                    item = (rng.choice([dev_id, other]), kid_swap(msg, other))
                elif kind == "cross_sign":
                    dev = devices[ids.index(dev_id)]
                    claimed = decode(msg)
                    item = (other, dev.message(claimed.seq, claimed.prev, {"t": 1.5}, dev=other,
                                               kid=other))
                elif kind == "oversized":
                    size = rng.choice([MAX_MESSAGE + 1, rng.randint(MAX_MESSAGE, 65536)])
                    item = (dev_id, msg + rng.randbytes(max(1, size - len(msg))))
                elif kind == "high_s":
                    item = (dev_id, high_s_twin(msg))
                elif kind == "other_topic":
                    item = (other, msg)
                elif kind == "unknown":
                    m = rng.choice(unknown_pool)
                    item = (decode(m).dev, m)
                elif kind == "revoked":
                    item = (revoked.id, rng.choice(revoked_pool))
                else:
                    continue  # replay/equivocation before anything was anchored
                outcome = oracle.outcome(item[1], item[0])
                if outcome == "valid":
                    continue  # a mutation that kept a valid message: not hostile, skip it
                hostile.append((item[0], item[1], kind))
                kinds[kind] += 1
                if outcome != "duplicate":
                    expected[outcome] += 1
            # Interleave: the valid readings keep their per-device order, spread at random
            # positions; the round ends with a valid reading, whose ack closes the round.
            stream: list[tuple[str, bytes]] = [(t, m) for t, m, _ in hostile]
            positions = sorted(rng.sample(range(len(stream) + len(valid) - 1), len(valid) - 1))
            for p, v in zip(positions, valid[:-1], strict=True):
                stream.insert(p, v)
            stream.append(valid[-1])
            pub.send(stream)
            sent_hostile += len(hostile)
            sent_valid += len(valid)
            want = {d.id: d.seq - 1 for d in devices}
            assert watcher.wait_upto(want, ROUND_TIMEOUT), (
                f"round {rnd}: acks stopped at {watcher.upto}; gateway alive: {gw.alive()}\n"
                + gw.log_since()[-3000:])
            for dev_id, m in valid:
                oracle.anchored[(dev_id, decode(m).seq)] = m
            anchored_pool.extend(valid)
            assert gw.alive(), gw.log_since()[-3000:]
            rss.append(gw.rss())
        elapsed = time.monotonic() - t0
        st = status(data)
        assert gw.stop() == 0, gw.log_since()[-3000:]
    finally:
        if pub is not None:
            pub.close()
        watcher.close()
        gw.cleanup()

    rejected = {k: v for k, v in st["rejected"].items() if v}
    warm = rss[2]
    growth = max(rss[-5:]) - warm
    summary = {
        "messages_fuzzed": sent_hostile, "valid_readings": sent_valid,
        "seconds": round(elapsed, 1), "messages_per_second": round((sent_hostile + sent_valid)
                                                                   / elapsed),
        "kinds": dict(sorted(kinds.items())), "rejected_by_reason": dict(sorted(rejected.items())),
        "replays_acknowledged_not_stored": kinds["replay"],
        "rss_mib_after_round_3": round(warm / 2**20, 1),
        "rss_mib_last": round(rss[-1] / 2**20, 1), "rss_growth_mib": round(growth / 2**20, 1),
    }
    print(f"\nhostile MQTT: {sent_hostile} adversarial messages + {sent_valid} valid readings "
          f"in {elapsed:.1f} s; rejected by reason {dict(sorted(rejected.items()))}; "
          f"gateway RSS {warm / 2**20:.1f} -> {rss[-1] / 2**20:.1f} MiB")
    print(json.dumps(summary))

    assert sent_hostile >= ROUNDS * HOSTILE_PER_ROUND >= 100_000
    # Every hostile message rejected, by the reason the oracle expected.
    assert rejected == dict(expected), (rejected, dict(expected))
    assert st["events"].get("equivocation", 0) == expected["equivocation"]
    # Every valid reading anchored, exactly once, replays included.
    assert st["readings"] == sent_valid
    per = VALID_PER_DEVICE_PER_ROUND * ROUNDS
    for d in devices:
        assert st["devices"][d.id]["readings"] == per
        assert st["devices"][d.id]["last_seq"] == per - 1 and st["devices"][d.id]["gaps"] == []
        assert watcher.acked(d.id) == set(range(per))
    assert st["devices"][revoked.id]["readings"] == 0
    assert not watcher.bad
    assert "Traceback" not in gw.log_since()
    # Flat memory: after warm-up, the last rounds stay within a few MiB of round 3.
    assert growth < 16 * 2**20, [round(r / 2**20, 1) for r in rss]
    proc = verify(data, vkey)
    assert proc.returncode == 0, proc.stdout + proc.stderr
