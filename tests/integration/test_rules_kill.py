"""Exactly once under SIGKILL: rules firing under load while the gateway is killed again and
again (at random moments and the instant its WAL is written: inside a batch's commit, inside an
outcome's), restarted each time on the same data directory and broker session.

Afterwards every matching reading has exactly one action entry (none twice, none missing,
none for a reading that does not match), every action has its outcome (a restart resumes the
ones not yet sent), the alert subscriber saw every action at least once, and `ledger verify`,
which re-runs the rules over the stored readings, passes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from faults import GatewayProc, verify
from faults import stored as stored_seqs

from gateway.fleet import registry
from gateway.sim.broker import PrivateBroker
from gateway.storage.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers_readings import Device  # noqa: E402

DEVICES = 4
COUNT = 250  # readings per device
RATE = 100.0  # readings/s, all devices together: 10 s of load
KILLS = 10
SEED = int(os.environ.get("IOT_ANCHOR_RULES_KILL_SEED", "15"))
RULES = """
[[rule]]
name = "hot"
when = "data.t > 30.0"
action = { type = "alert" }

[[rule]]
name = "warm-twice"
when = "data.t > 25.0"
for = 2
action = { type = "alert", message = "two warm readings in a row" }
"""


def temperature(seq: int) -> float:
    return 20.0 + (seq * 7 % 16)  # 20 .. 35: some readings are hot, some warm, some neither


def kill_soon(gw: GatewayProc, wal: Path, rng: random.Random) -> None:
    if rng.random() < 0.5:
        time.sleep(rng.uniform(0.2, 1.2))
        gw.kill()
        return
    def stamp() -> tuple[int, int]:
        try:
            st = os.stat(wal)
            return st.st_mtime_ns, st.st_size
        except FileNotFoundError:
            return 0, 0
    time.sleep(rng.uniform(0.1, 0.5))
    before, deadline = stamp(), time.monotonic() + 3
    while stamp() == before and time.monotonic() < deadline:
        time.sleep(0.0005)
    gw.kill()


@pytest.mark.slow
def test_rules_fire_exactly_once_across_sigkills(tmp_path: Path, broker: PrivateBroker) -> None:
    rng = random.Random(SEED)
    data = tmp_path / "data"
    store, vkey = Store.create(data)
    devs = [Device(f"k{i}") for i in range(DEVICES)]
    for d in devs:
        registry.add(store, d.id, d.public_bytes)
    store.apply_rules(store.load_signer(), RULES, hashlib.sha256(RULES.encode()).digest())
    store.close()
    msgs = [(d.id, d.next({"t": temperature(s)})) for s in range(COUNT) for d in devs]

    alerts: Counter[int] = Counter()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rules-kill-alerts",
                      clean_session=False)
    sub.on_connect = lambda c, *a: c.subscribe("anchor/alerts/#", qos=1)
    sub.on_message = lambda c, u, m: alerts.update([json.loads(m.payload)["entry"]])
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rules-kill-pub")
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()

    def publish() -> None:
        t0 = time.monotonic()
        for k, (dev, m) in enumerate(msgs):
            delay = t0 + k / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pub.publish(f"anchor/{dev}/readings", m, qos=1)

    gw = GatewayProc(data, broker.url, tmp_path / "gateway.log", "--batch-interval", "0.2")
    publisher = threading.Thread(target=publish)
    try:
        gw.start()
        publisher.start()
        for _ in range(KILLS):
            kill_soon(gw, data / "ledger.db-wal", rng)
            time.sleep(rng.choice([0.0, 0.0, 0.3]))
            gw.start()
        publisher.join()
        deadline = time.monotonic() + 120
        while True:  # the last run anchors everything and carries out every action
            got = stored_seqs(data)
            with Store.open(data, readonly=True) as s:
                pending = s.pending_actions()
            if sum(map(len, got.values())) == len(msgs) and not pending:
                break
            assert time.monotonic() < deadline, gw.log_since()
            time.sleep(0.2)
        assert gw.stop() == 0
    finally:
        gw.cleanup()
        pub.loop_stop()
        pub.disconnect()
    time.sleep(0.5)
    sub.loop_stop()
    sub.disconnect()

    with Store.open(data, readonly=True) as s:
        actions = s.records("action")
        log = s.action_log()
    hot = Counter((d, seq) for a in actions if a.fields["rule"] == "hot"
                  for d, seq, _ in a.fields["readings"])
    matching = {(d.id, s) for s in range(COUNT) for d in devs if temperature(s) > 30.0}
    assert set(hot) == matching and set(hot.values()) == {1}
    warm = [a for a in actions if a.fields["rule"] == "warm-twice"]
    assert warm and all(len(a.fields["readings"]) == 2 for a in warm)
    assert {status for _, status, _ in log} == {"sent"}
    assert set(alerts) == {a.i for a in actions}  # each alert arrived (at least once)
    res = verify(data, vkey)
    assert res.returncode == 0, res.stdout + res.stderr
    print(f"\nrules kill test: {KILLS} SIGKILLs, {len(msgs)} readings, {len(actions)} action "
          f"entries ({len(hot)} hot, {len(warm)} warm-twice), {sum(alerts.values())} alerts "
          f"received for them, ledger verify ok")
