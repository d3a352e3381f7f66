"""Rules in the running service (docs/rules.md), against the real Mosquitto: alerts on
anchor/alerts/<rule>, a webhook POSTed to a local HTTP server (with its retries, and a failure
recorded with its reason), a command handed to the downlink's sender (here a stand-in that
publishes on anchor/<id>/cmd, checked by a real subscriber) and its confirmation closing the
outcome; then `ledger verify` passes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.audit.store_audit import audit
from gateway.fleet import registry
from gateway.ingest.pipeline import Pipeline
from gateway.service.config import ServiceConfig
from gateway.service.runner import GatewayService
from gateway.sim.broker import PrivateBroker, free_port
from gateway.storage.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers_readings import Device  # noqa: E402


class _Hook(BaseHTTPRequestHandler):
    got: list[dict[str, Any]] = []
    fail_first = 0  # answer 503 to this many requests first

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if _Hook.fail_first > 0:
            _Hook.fail_first -= 1
            self.send_response(503)
        else:
            _Hook.got.append(json.loads(body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class CmdStandIn:
    """The downlink's command sender as the contract gives it, publishing an unsealed JSON
    stand-in on anchor/<id>/cmd through the service (the real one seals it)."""

    def __init__(self) -> None:
        self.svc: GatewayService | None = None

    async def send_command(self, cmd: Any) -> None:
        assert self.svc is not None
        await self.svc.publish_confirmed(f"anchor/{cmd.device}/cmd", json.dumps(
            {"id": cmd.id, "op": cmd.op, "args": cmd.args}).encode())


def test_alert_webhook_and_command_actions(broker: PrivateBroker, tmp_path: Path) -> None:
    data = tmp_path / "d"
    store, _ = Store.create(data)
    sensor, fan = Device("sensor-1"), Device("fan-2")
    for d in (sensor, fan):
        registry.add(store, d.id, d.public_bytes)
    http = ThreadingHTTPServer(("127.0.0.1", free_port()), _Hook)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    dead = free_port()  # nothing listens there: the webhook fails after its retries
    text = f"""
[[rule]]
name = "hot"
when = "data.t > 30.0"
devices = ["sensor-1"]
action = {{ type = "alert", message = "sensor-1 is hot" }}

[[rule]]
name = "hook"
when = "data.t > 30.0"
[rule.action]
type = "webhook"
url = "http://127.0.0.1:{http.server_port}/fired"
timeout = 2
retries = 2

[[rule]]
name = "nohook"
when = "data.t > 30.0"
action = {{ type = "webhook", url = "http://127.0.0.1:{dead}/x", timeout = 1, retries = 1 }}

[[rule]]
name = "fan-on"
when = "data.t > 30.0"
devices = ["sensor-1"]
[rule.action]
type = "command"
device = "fan-2"
op = "output"
args = {{ name = "fan", on = true }}
"""
    store.apply_rules(store.load_signer(), text, hashlib.sha256(text.encode()).digest())
    store.close()
    _Hook.got, _Hook.fail_first = [], 1
    sender = CmdStandIn()

    async def main() -> None:
        cfg = ServiceConfig(data_dir=data, broker=broker.url, batch_interval=0.2)
        svc = GatewayService(cfg, lambda: Pipeline(Store.open(data), workers=1,
                                                   processes=False, owns_store=True))
        sender.svc = svc
        svc.command_sender = sender
        task = asyncio.create_task(svc.run())
        got: list[tuple[str, bytes]] = []
        async with aiomqtt.Client("127.0.0.1", broker.port) as sub:
            await sub.subscribe("anchor/alerts/#", qos=1)
            await sub.subscribe("anchor/fan-2/cmd", qos=1)
            while not svc.connected:
                await asyncio.sleep(0.05)
            async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
                await pub.publish("anchor/sensor-1/readings", sensor_msgs[0], qos=1)
                await pub.publish("anchor/sensor-1/readings", sensor_msgs[1], qos=1)
                await pub.publish("anchor/fan-2/readings", fan_msg, qos=1)

            async def collect() -> None:
                async for m in sub.messages:
                    got.append((m.topic.value, bytes(m.payload)))  # type: ignore[arg-type]
            col = asyncio.create_task(collect())
            for _ in range(200):
                if len(got) >= 2:
                    break
                await asyncio.sleep(0.05)
            col.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await col
        # the device confirms the command (the downlink verifies it and calls this)
        cmd = json.loads(next(p for t, p in got if t == "anchor/fan-2/cmd"))
        for _ in range(100):  # until its "sent" outcome is recorded
            with Store.open(data, readonly=True) as s:
                row = s.one("SELECT status FROM actions WHERE entry = ?", (cmd["id"],))
            if row is not None and row[0] == "sent":
                break
            await asyncio.sleep(0.05)
        assert await svc.rule_confirmation("fan-2", cmd["id"], True, None, b"cose") is not None
        assert await svc.rule_confirmation("fan-2", cmd["id"], True, None, b"cose") is None
        for _ in range(200):
            with Store.open(data, readonly=True) as s:
                if not s.pending_actions() and len(s.records("outcome")) >= 5:
                    break
            await asyncio.sleep(0.1)
        svc.request_stop()
        assert await asyncio.wait_for(task, 30) == 0
        alerts = [json.loads(p) for t, p in got if t == "anchor/alerts/hot"]
        assert len(alerts) == 1 and alerts[0]["readings"][0]["seq"] == 1
        assert alerts[0]["message"] == "sensor-1 is hot"
        assert cmd["op"] == "output" and cmd["args"] == {"name": "fan", "on": True}

    sensor_msgs = [sensor.next({"t": 20.0}), sensor.next({"t": 35.5})]
    fan_msg = fan.next({"h": 40})
    try:
        asyncio.run(main())
    finally:
        http.shutdown()
    with Store.open(data) as s:
        log = {e.fields["rule"]: (status, e.i) for e, status, _ in s.action_log()}
        assert {k: v[0] for k, v in log.items()} == {
            "hot": "sent", "hook": "sent", "nohook": "failed", "fan-on": "done"}
        reasons = [o.fields.get("reason") for o in s.records("outcome")
                   if o.fields["action"] == log["nohook"][1]]
        assert reasons and reasons[0].startswith("2 tries, the last: ")
        assert [h["rule"] for h in _Hook.got] == ["hook"]  # after one 503: a retry
        assert audit(s, s.vkey(), workers=1).ok


class _Refusing:
    """A command sender that cannot send the first `n` times (a broker away): the action
    stays pending and the action loop takes it up again."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls: list[int] = []

    async def send_command(self, cmd: Any) -> None:
        from gateway.errors import BrokerError

        self.calls.append(cmd.id)
        if len(self.calls) <= self.n:
            raise BrokerError("not connected to the broker", "it is sent once reconnected")


def test_an_action_not_possible_now_is_taken_up_again(broker: PrivateBroker,
                                                       tmp_path: Path) -> None:
    """The action loop reads only the pending actions above the newest it took, and all of
    them again after one could not be carried out: a command refused twice is sent on the
    third try and recorded once; later firings are still taken up."""
    data = tmp_path / "d"
    store, _ = Store.create(data)
    sensor, fan = Device("sensor-1"), Device("fan-2")
    for d in (sensor, fan):
        registry.add(store, d.id, d.public_bytes)
    text = """
[[rule]]
name = "fan-on"
when = "data.t > 30.0"
devices = ["sensor-1"]
action = { type = "command", device = "fan-2", op = "output", args = { name = "fan", on = true } }

[[rule]]
name = "hot"
when = "data.t > 40.0"
action = { type = "alert" }
"""
    store.apply_rules(store.load_signer(), text, hashlib.sha256(text.encode()).digest())
    store.close()
    sender = _Refusing(2)
    msgs = [sensor.next({"t": 35.0}), sensor.next({"t": 45.0})]

    async def main() -> None:
        cfg = ServiceConfig(data_dir=data, broker=broker.url, batch_interval=0.2)
        svc = GatewayService(cfg, lambda: Pipeline(Store.open(data), workers=1,
                                                   processes=False, owns_store=True))
        svc.command_sender = sender
        task = asyncio.create_task(svc.run())
        while not svc.connected:
            await asyncio.sleep(0.05)
        async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
            await pub.publish("anchor/sensor-1/readings", msgs[0], qos=1)
            for _ in range(100):  # the command's first try, refused
                if sender.calls:
                    break
                await asyncio.sleep(0.05)
            await pub.publish("anchor/sensor-1/readings", msgs[1], qos=1)
        for _ in range(200):
            with Store.open(data, readonly=True) as s:
                if not s.pending_actions() and len(s.records("outcome")) >= 3:
                    break
            await asyncio.sleep(0.1)
        svc.request_stop()
        assert await asyncio.wait_for(task, 30) == 0

    asyncio.run(main())
    with Store.open(data) as s:
        log = sorted((e.fields["rule"], status) for e, status, _ in s.action_log())
        outcomes = [(o.fields["action"], o.fields["status"]) for o in s.records("outcome")]
        assert audit(s, s.vkey(), workers=1).ok
    # fan-on fired twice (35 and 45 are over 30), hot once; each command tried until sent
    assert log == [("fan-on", "sent"), ("fan-on", "sent"), ("hot", "sent")], (log, sender.calls)
    assert len(outcomes) == 3 and len(set(outcomes)) == 3, outcomes
    assert len(sender.calls) == 2 + 2 and len(set(sender.calls)) == 2, sender.calls
