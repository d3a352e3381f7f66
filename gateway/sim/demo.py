"""`iot-anchor demo`: the whole system on this machine in well under a minute.

A private Mosquitto on a free loopback port, a fresh data dir (temporary), `iot-anchor init`,
the gateway (`iot-anchor run --http 127.0.0.1:PORT`, a child process, with the operator
console on a free loopback port, whose address it prints), 3 MicroPython devices (real
firmware processes) publishing a reading per second for about 20 s; then the devices drain
their outboxes and exit, the gateway is stopped with SIGTERM, `iot-anchor serve` keeps the
console up on the same address, and the demo shows what happened using the ordinary
commands: `ledger status`, `ledger verify`, `receipt` and `verify-receipt` (offline, with the
gateway's vkey and the device's key).
A rule is at work meanwhile (docs/rules.md): applied with `rules apply` once the devices are
registered, it fires when the first device's temperature stays above a threshold for 3
readings (at most once per 8 s); each firing is an `action` entry, its alert arrives on
anchor/alerts/<rule> (a subscriber here shows it), its outcome is recorded, `rules log` lists
them and `ledger verify` re-runs the rule over the stored readings.
It exits 0 only if every step holds. Everything it starts is stopped before it returns; with
`keep`, the console stays up until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from gateway.errors import AnchorError
from gateway.mqtt.client import Endpoint, session
from gateway.sim.broker import PrivateBroker, free_port
from gateway.sim.simulate import MicroPythonFleet, firmware_cmd, stop_process_group
from gateway.wire.mqtt import ConnectOptions

DEVICES = 3
INTERVAL = 1.0
READINGS = 18  # per device: about 20 s with start-up and drain


THRESHOLD = 10.0  # degrees C: the Unix port's simulated room (18-24) or CPU temperature


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def demo_rules(dev: str, fan_dev: str) -> str:
    """The demo's rules: an alert when `dev` is warm for 3 readings in a row, and then a
    command that switches `fan_dev`'s output "fan" on."""
    when = f"data.temp > {THRESHOLD} || data.cpu_temp > {THRESHOLD}"
    return (f'[[rule]]\nname = "warm"\nwhen = "{when}"\n'
            f'devices = ["{dev}"]\nfor = 3\ncooldown = 8\n'
            f'action = {{ type = "alert", message = "{dev} is above {THRESHOLD} C" }}\n\n'
            f'[[rule]]\nname = "fan-on"\nwhen = "{when}"\n'
            f'devices = ["{dev}"]\nfor = 3\ncooldown = 600\n'
            f'action = {{ type = "command", device = "{fan_dev}", op = "output", '
            f'args = {{ name = "fan", on = true }} }}\n')


class AlertWatcher:
    """A subscriber to anchor/alerts/# (the gateway's own MQTT client, in a thread)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.got: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(self._main(),), daemon=True)

    def __enter__(self) -> AlertWatcher:
        self._thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            if self._stop is not None:
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

    def _on(self, topic: bytes, payload: bytes, mid: int, qos: int) -> None:
        try:
            self.got.append(json.loads(payload))
        except ValueError:
            pass

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            async with session(Endpoint("127.0.0.1", self.port), ConnectOptions("demo-alerts"),
                               self._on) as conn:
                await conn.subscribe([("anchor/alerts/#", 1)])
                self.ready.set()
                await self._stop.wait()
        finally:
            self.ready.set()


class Demo:
    def __init__(self, workdir: Path, devices: int = DEVICES, readings: int = READINGS,
                 interval: float = INTERVAL, keep: bool = False) -> None:
        self.work = workdir
        self.data = workdir / "data"
        self.devices, self.readings, self.interval = devices, readings, interval
        self.keep = keep
        self.failures: list[str] = []
        self.alerts: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.http = f"127.0.0.1:{free_port()}"
        self.console = f"http://{self.http}/console/"
        self.serve: subprocess.Popen[bytes] | None = None

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:5.1f} s] {text}", flush=True)

    def check(self, ok: bool, what: str) -> bool:
        if not ok:
            self.failures.append(what)
            self.say(f"FAILED: {what}")
        return ok

    def run_cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, IOT_ANCHOR_DATA=str(self.data))
        return subprocess.run(cli(*args), capture_output=True, text=True, timeout=timeout,
                              env=env)

    def main(self) -> int:
        with PrivateBroker(workdir=self.work / "broker") as broker:
            self.say(f"Mosquitto listening on {broker.url} (private, loopback only)")
            p = self.run_cli("init", "--data", str(self.data))
            if not self.check(p.returncode == 0, f"init: {p.stderr.strip()}"):
                return 1
            vkey = p.stdout.strip().splitlines()[-1]
            self.say(f"data dir {self.data}; gateway key {vkey}")
            gw_log = self.work / "gateway.log"
            with open(gw_log, "wb") as log:
                gw = subprocess.Popen(
                    cli("run", "--data", str(self.data), "--broker", broker.url,
                        "--batch-interval", "0.5", "--http", self.http),
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)
            fleet = MicroPythonFleet(self.work / "fleet", self.devices)
            watcher = AlertWatcher(broker.port)
            try:
                if self.check(wait_for_line(gw_log, "serving the log on ", gw),
                              f"the gateway's HTTP server did not start, see {gw_log}"):
                    self.say(f"operator console: {self.console} (open it in a browser; "
                             "metrics on /metrics)")
                added = fleet.prepare(self.data)
                self.say(f"{added} MicroPython devices created (firmware keygen) and registered")
                self.check(gw.poll() is None, f"the gateway exited early, see {gw_log}")
                rules = self.work / "rules.toml"
                rules.write_text(demo_rules(fleet.devices[0].dev, fleet.devices[1].dev))
                p = self.run_cli("rules", "apply", str(rules))
                self.check(p.returncode == 0, f"rules apply: {p.stderr.strip()}")
                self.say(f"rules applied: {fleet.devices[0].dev} above {THRESHOLD} C for 3 "
                         f"readings -> an alert on anchor/alerts/warm, and a command that "
                         f"switches {fleet.devices[1].dev}'s fan on ({p.stdout.strip()})")
                watcher.__enter__()
                fleet.start(broker.url, self.interval, self.readings)
                self.say(f"devices running: {self.readings} readings each, one every "
                         f"{self.interval:g} s, then they drain their outboxes")
                fleet.wait(time.monotonic() + self.readings * self.interval + 30)
                reports = fleet.reports()
                time.sleep(1.5)  # the last batch's alerts go out
            finally:
                watcher.__exit__()
                fleet.stop()
                if gw.poll() is None:
                    gw.send_signal(signal.SIGTERM)
                    try:
                        gw.wait(20)
                    except subprocess.TimeoutExpired:
                        stop_process_group(gw, grace=1)
            self.check(gw.returncode == 0,
                       f"the gateway did not stop cleanly (exit {gw.returncode}), see {gw_log}")
            self.say("devices stopped; gateway stopped with SIGTERM "
                     f"(exit {gw.returncode}) after its last batch")
            self.start_serve()
            batches = [ln for ln in gw_log.read_text(errors="replace").splitlines()
                       if " batch: " in ln]
            published = sum(r.produced for r in reports)
            acked = sum(r.acknowledged for r in reports)
            for r in reports:
                self.say(f"  {r.dev}: published {r.produced}, acknowledged as anchored "
                         f"{r.acknowledged}" + (f" ({r.note})" if r.note else ""))
                self.check(r.ok, f"{r.dev} did not get every reading acknowledged")
        self.alerts = watcher.got
        return self.report(vkey, published, acked, len(batches), reports[0].dev if reports
                           else None, fleet)

    def report(self, vkey: str, published: int, acked: int, batches: int, dev: str | None,
               fleet: MicroPythonFleet) -> int:
        p = self.run_cli("ledger", "status", "--json")
        if not self.check(p.returncode == 0, f"ledger status: {p.stderr.strip()}"):
            return 1
        status: dict[str, Any] = json.loads(p.stdout)
        anchored = int(status["readings"])
        print()
        print(f"readings published: {published}")
        print(f"readings anchored:  {anchored} (acknowledged to the devices: {acked})")
        print(f"ledger entries:     {status['entries']} ({batches} batches, the rest device "
              "registrations, the rule set, its firings and their outcomes)")
        self.check(anchored == published == acked,
                   f"published {published}, anchored {anchored}, acknowledged {acked}")
        print("latest checkpoint:")
        for line in str(status["checkpoint"]).rstrip("\n").splitlines():
            print(f"    {line}")
        lg = self.run_cli("rules", "log", "--json")
        logged = json.loads(lg.stdout) if lg.returncode == 0 else []
        fired = [f for f in logged if f["rule"] == "warm"]
        cmds = [f for f in logged if f["rule"] == "fan-on"]
        print(f"rule 'warm' fired {len(fired)} times; alerts received on anchor/alerts/warm: "
              f"{len(self.alerts)}")
        for f in fired[:4]:
            seqs = ", ".join(str(r["seq"]) for r in f["readings"])
            print(f"    entry {f['entry']}: {f['readings'][0]['dev']} seqs {seqs} -> alert, "
                  f"{f['status']} (outcome entry {f['outcome']})")
        self.check(bool(fired), "the rule never fired")
        self.check(all(f["status"] == "sent" for f in fired), "an alert was not sent")
        self.check({a["entry"] for a in self.alerts} >= {f["entry"] for f in fired},
                   "an alert did not arrive")
        fan_dev = fleet.devices[1]
        fan = fan_dev.dir / "outputs" / "fan"
        st = subprocess.run(firmware_cmd("status", "--dir", str(fan_dev.dir)),
                            capture_output=True, text=True, timeout=60)
        status_dev = json.loads(st.stdout) if st.returncode == 0 else {}
        for f in cmds:
            print(f"rule 'fan-on': entry {f['entry']}: command output fan on -> "
                  f"{f['action']['device']}: {f['status']} (outcome entry {f['outcome']}: the "
                  "device's signed confirmation, verified and anchored)")
        print(f"{fan_dev.dev}: outputs/fan = {fan.read_text().strip() if fan.exists() else '-'}"
              f"; status: last command {status_dev.get('last_command')}")
        self.check(len(cmds) == 1 and cmds[0]["status"] == "done",
                   "the command was not confirmed by the device")
        self.check(fan.exists() and fan.read_text().strip() == "1", "the fan is not on")
        v = self.run_cli("ledger", "verify", timeout=120)
        result = (v.stdout.strip() or v.stderr.strip()).splitlines()[-1:] or [""]
        print(f"ledger verify:      exit {v.returncode}: {result[0]}")
        self.check(v.returncode == 0, "ledger verify failed")
        if dev is None:
            self.check(False, "no device ran")
            return 1
        seq = max(0, min(5, published // max(1, self.devices) - 1))
        r = self.run_cli("receipt", dev, str(seq))
        if self.check(r.returncode == 0, f"receipt {dev} {seq}: {r.stderr.strip()}"):
            receipt_path = self.work / f"receipt-{dev}-{seq}.json"
            receipt_path.write_text(r.stdout)
            dev_key = (fleet.fleet_dir / f"{dev}.pub").read_text().strip()
            vr = self.run_cli("verify-receipt", str(receipt_path), "--gateway-key", vkey,
                              "--device-key", dev_key)
            said = (vr.stdout.strip() or vr.stderr.strip()).splitlines()[-1:] or [""]
            print(f"receipt for {dev} seq {seq}: {len(r.stdout)} bytes of JSON; verified "
                  f"offline with the gateway vkey and the device key: exit {vr.returncode}: "
                  f"{said[0]}")
            self.check(vr.returncode == 0, "the receipt did not verify")
        took = time.monotonic() - self.t0
        print()
        if self.failures:
            print(f"demo FAILED after {took:.1f} s: " + "; ".join(self.failures))
            return 1
        print(f"demo passed in {took:.1f} s")
        return 0

    def start_serve(self) -> None:
        """`iot-anchor serve` on the console's address, over the demo's data dir."""
        log_path = self.work / "serve.log"
        with open(log_path, "wb") as log:
            self.serve = subprocess.Popen(
                cli("serve", "--data", str(self.data), "--http", self.http), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        if self.check(wait_for_line(log_path, "serving ", self.serve),
                      f"iot-anchor serve did not start, see {log_path}"):
            self.say(f"console still up on {self.console} (iot-anchor serve over the demo's "
                     "data dir)")

    def stay_up(self) -> None:
        """--keep: the console stays up until Ctrl-C (or SIGTERM)."""
        if self.serve is None or self.serve.poll() is not None:
            return
        print(f"the console stays up on {self.console}: press Ctrl-C to stop it", flush=True)
        try:
            self.serve.wait()
        except KeyboardInterrupt:
            print("stopping the console", flush=True)

    def stop_serve(self) -> None:
        if self.serve is not None and self.serve.poll() is None:
            self.serve.send_signal(signal.SIGTERM)
            try:
                self.serve.wait(10)
            except subprocess.TimeoutExpired:
                stop_process_group(self.serve, grace=1)


def wait_for_line(log: Path, marker: str, proc: subprocess.Popen[bytes],
                  timeout: float = 20) -> bool:
    """True once `marker` is in the log; False when the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker in log.read_text(errors="replace"):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def run_demo(keep: bool = False) -> int:
    work = Path(tempfile.mkdtemp(prefix="iot-anchor-demo-"))
    demo = Demo(work, keep=keep)
    try:
        rc = demo.main()
        if keep:
            demo.stay_up()
        return rc
    except AnchorError:
        raise
    finally:
        demo.stop_serve()
        if keep:
            print(f"(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)
