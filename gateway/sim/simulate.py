"""`iot-anchor simulate`: a fleet of devices publishing to a running gateway.

Two engines:

* `micropython` (default): N real firmware processes under the MicroPython Unix port.
  Each device has a directory `<fleet>/sim-NNNN` made by the firmware's `main.py keygen` (the
  firmware tree is gateway.fleet.firmware.firmware_dir(): installed with the gateway); its
  public key is kept beside it (`sim-NNNN.pub`) and registered in the gateway's data dir.
  The devices run `main.py run --dir D --broker URL --interval S --count C` with
  C = duration / interval readings: after --duration they stop producing and drain their
  outbox. Each prints a JSON summary as its last line ({"produced", "acked", ...}).
  simulate waits up to --drain-timeout after the production window for every process to
  finish; one that has not is stopped with SIGINT, then SIGKILL.
* `cpython`: the load engine in gateway/sim/loadgen.py (pre-signed messages, the same bytes as
  the firmware, many devices per process), for scale tests. Device state lives in
  `<fleet>/load-NNNN.json` so a second run continues the seqs.

The fleet folder defaults to `<data>/fleet`, so running simulate again on the same data dir
reuses the devices (their keys are registered once) and their seqs continue.
simulate does not start a gateway unless asked (`--with-gateway`): run `iot-anchor run`
beside it, or use `iot-anchor demo`.
It exits 0 only when every reading produced was acknowledged as anchored.
The devices and the gateway run in the caller's working directory, so relative paths (--data,
--fleet-dir) mean the same to them as to the caller.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from gateway.errors import AnchorError, ConfigError
from gateway.fleet.firmware import firmware_main, setup_build
from gateway.sim import loadgen
from gateway.storage.location import default_store
from gateway.wire.broker_url import redact_url
from gateway.wire.signer import DeviceSigner


def micropython_binary() -> str:
    """$IOT_ANCHOR_MICROPYTHON, else the Unix port `make setup` built in the source checkout
    (.cache/micropython/micropython), else micropython on PATH."""
    env = os.environ.get("IOT_ANCHOR_MICROPYTHON")
    if env:
        if not os.access(env, os.X_OK):
            raise ConfigError(f"IOT_ANCHOR_MICROPYTHON={env} is not an executable",
                              "point it at the MicroPython Unix port or unset it")
        return env
    built = setup_build("micropython")
    if built and os.access(built, os.X_OK):
        return str(built)
    found = shutil.which("micropython")
    if found:
        return found
    raise ConfigError("the MicroPython Unix port is missing",
                      "run 'make setup' (tools/install-micropython) or set IOT_ANCHOR_MICROPYTHON")


def firmware_cmd(*args: str) -> list[str]:
    """The command line of the firmware's main.py under the Unix port, with `args`."""
    return [micropython_binary(), str(firmware_main()), *args]


def downlink_public_key(data_dir: Path) -> bytes:
    """The gateway's downlink public key (65 bytes) of the data directory (made if missing)."""
    from gateway.storage import downlink_keyfile

    return downlink_keyfile.public_bytes(downlink_keyfile.load_or_create(data_dir))


def trust(dev_dir: Path, downlink_key: bytes) -> None:
    """Give an existing device state the gateway's downlink key (the firmware's `trust`)."""
    p = subprocess.run(firmware_cmd("trust", "--dir", str(dev_dir), "--downlink-key",
                                    downlink_key.hex()),
                       capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise AnchorError(f"firmware trust for {dev_dir} failed: "
                          f"{(p.stderr or p.stdout).strip()[-300:]}",
                          f"check that {dev_dir} is writable and the firmware runs")


def keygen(dev_dir: Path, dev: str, secret: str | None = None,
           downlink_key: bytes | None = None) -> bytes:
    """Create a device's state with the firmware's keygen (trusting the gateway's downlink
    key when given); returns the 65-byte public key."""
    args = ["keygen", "--dir", str(dev_dir), "--id", dev]
    if secret:
        args += ["--secret", secret]
    if downlink_key:
        args += ["--downlink-key", downlink_key.hex()]
    p = subprocess.run(firmware_cmd(*args), capture_output=True, text=True, timeout=120)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        raise AnchorError(f"firmware keygen for {dev} failed: "
                          f"{(p.stderr or p.stdout).strip()[-300:]}",
                          f"check that {dev_dir} is writable and the firmware runs")
    key = bytes.fromhex(lines[-1].strip())
    if len(key) != 65:
        raise AnchorError(f"firmware keygen for {dev} printed {lines[-1]!r}, not a public key",
                          "check the firmware version")
    return key


def register_devices(data_dir: Path, keys: dict[str, bytes]) -> int:
    """Register every device not yet known; returns how many were added.

    A device id already registered with another key is an error (its identity would change).
    """
    from gateway.fleet import registry
    from gateway.storage.store import Store

    added = 0
    with Store.open(data_dir) as store:
        for dev, key in keys.items():
            row = store.device(dev)
            if row is not None:
                if bytes(row.key) != key or row.status != "active":
                    raise ConfigError(
                        f"device {dev} is already registered in {data_dir} with another key "
                        f"or revoked",
                        "use a fresh --data dir, or the --fleet-dir that created it",
                    )
                continue
            registry.add(store, dev, key)
            added += 1
    return added


@dataclass
class DeviceReport:
    dev: str
    produced: int = 0
    acknowledged: int = 0
    exit_code: int | None = None
    note: str = ""
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        # A restarted device also acknowledges readings replayed from its previous run, so
        # acknowledged may exceed produced; its outbox must be empty at the end.
        return (self.exit_code in (0, None) and self.acknowledged >= self.produced > 0
                and int(self.summary.get("outbox", 0)) == 0)


@dataclass
class SimResult:
    devices: list[DeviceReport]
    figures: dict[str, Any]

    @property
    def ok(self) -> bool:
        return (bool(self.devices) and all(d.ok for d in self.devices)
                and not self.figures.get("interrupted"))

    def print(self, out: TextIO = sys.stdout) -> None:
        width = max((len(d.dev) for d in self.devices), default=6)
        print(f"{'device':<{width}}  produced  acknowledged", file=out)
        for d in self.devices:
            flag = "" if d.ok else f"  <- {d.note or 'not all acknowledged'}"
            print(f"{d.dev:<{width}}  {d.produced:>8}  {d.acknowledged:>12}{flag}", file=out)
        produced = sum(d.produced for d in self.devices)
        acked = sum(d.acknowledged for d in self.devices)
        status = "all acknowledged" if self.ok else "NOT all acknowledged"
        print(f"{len(self.devices)} devices: {produced} readings produced, {acked} acknowledged "
              f"as anchored: {status}", file=out)
        if not self.ok and not self.figures.get("interrupted"):
            print("simulate: check that the gateway runs ('iot-anchor run' with the same --data "
                  "and --broker, or pass --with-gateway) and that its log shows no error, or give "
                  "it longer (--drain-timeout)", file=sys.stderr)
        print(json.dumps({"ok": self.ok, "devices": len(self.devices), "produced": produced,
                          "acknowledged": acked, **self.figures}), file=out)


def stop_process(proc: subprocess.Popen[Any], grace: float = 5.0,
                 sig: int = signal.SIGINT) -> None:
    """`sig` (SIGINT) to one process, then SIGKILL it after `grace` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_process_group(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGINT the process group, then SIGKILL it after `grace` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def last_json_line(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                d = json.loads(line)
            except ValueError:
                return None
            return d if isinstance(d, dict) else None
    return None


@dataclass
class FleetDevice:
    dev: str
    dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    log_offset: int = 0  # where this run's output starts in the (appended) log


class MicroPythonFleet:
    """N firmware processes; `start()` then `wait()` (or `stop()`); usable by demo and tests."""

    def __init__(self, fleet_dir: Path, n: int, prefix: str = "sim") -> None:
        if n < 1:
            raise ConfigError(f"--devices {n} is below 1", "give at least one device")
        self.fleet_dir = fleet_dir
        self.devices = [
            FleetDevice(f"{prefix}-{i:04d}", fleet_dir / f"{prefix}-{i:04d}",
                        fleet_dir / f"{prefix}-{i:04d}.log")
            for i in range(n)
        ]

    def prepare(self, data_dir: Path) -> int:
        """keygen the devices that are new, register them; returns how many were registered."""
        self.fleet_dir.mkdir(parents=True, exist_ok=True)
        keys = {}
        downlink = downlink_public_key(data_dir)
        for d in self.devices:
            pub = d.dir.with_suffix(".pub")
            if not pub.exists():
                key = keygen(d.dir, d.dev, downlink_key=downlink)
                pub.write_text(key.hex() + "\n")
            elif not (d.dir / "gateway.json").exists():  # a fleet made before the downlink
                trust(d.dir, downlink)
            keys[d.dev] = bytes.fromhex(pub.read_text().strip())
        return register_devices(data_dir, keys)

    def start(self, broker: str, interval: float, count: int,
              extra: tuple[str, ...] = ()) -> None:
        """Run every device: `count` readings every `interval` s; `extra`: more run options
        (e.g. ("--ack-timeout", "2", "--timeout", "30"))."""
        for d in self.devices:
            self.start_one(d, broker, interval, count, extra)

    def start_one(self, d: FleetDevice, broker: str, interval: float, count: int,
                  extra: tuple[str, ...] = ()) -> None:
        cmd = firmware_cmd("run", "--dir", str(d.dir), "--broker", broker,
                           "--interval", f"{interval:g}", "--count", str(count), *extra)
        d.log_offset = d.log.stat().st_size if d.log.exists() else 0
        with open(d.log, "ab") as log:
            # In our process group: whoever stops simulate's group stops the devices too.
            d.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)

    def wait(self, deadline: float) -> None:
        """Wait until every process exits or `deadline` (monotonic) passes; stop the rest."""
        for d in self.devices:
            if d.proc is None:
                continue
            try:
                d.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                stop_process(d.proc)

    def stop(self) -> None:
        for d in self.devices:
            if d.proc is not None:
                stop_process(d.proc, grace=3.0)

    def reports(self) -> list[DeviceReport]:
        out = []
        for d in self.devices:
            text = ""
            if d.log.exists():
                with open(d.log, "rb") as f:
                    f.seek(d.log_offset)
                    text = f.read().decode(errors="replace")
            summary = last_json_line(text) or {}
            rep = DeviceReport(d.dev, int(summary.get("produced", 0)),
                               int(summary.get("acked", 0)),
                               d.proc.returncode if d.proc else None, summary=summary)
            if not summary:
                tail = text.strip().splitlines()[-1:] or ["no output"]
                rep.note = f"no summary (exit {rep.exit_code}): {tail[0][:120]}"
            elif rep.exit_code not in (0, None):
                rep.note = f"exit code {rep.exit_code}, outbox {summary.get('outbox')}"
            out.append(rep)
        return out


def run_micropython(data_dir: Path, fleet_dir: Path, n: int, interval: float, duration: float,
                    broker: str, drain_timeout: float, ack_timeout: float = 10.0,
                    count: int | None = None,
                    log: Callable[[str], None] = print) -> SimResult:
    """Each device produces `count` readings (default duration / interval), one per interval
    (0: as fast as it signs; then --count is needed and --duration bounds the production)."""
    if interval < 0:
        raise ConfigError(f"--interval {interval} is negative", "give e.g. --interval 1")
    if count is None:
        if interval == 0:
            raise ConfigError("--interval 0 (as fast as possible) needs --count",
                              "give the readings per device, e.g. --count 20")
        count = max(1, math.ceil(duration / interval))
    if count < 1:
        raise ConfigError(f"--count {count} is below 1", "give at least 1")
    production = count * interval if interval > 0 else duration
    fleet = MicroPythonFleet(fleet_dir, n)
    added = fleet.prepare(data_dir)
    log(f"simulate: {n} MicroPython devices ({added} newly registered), {count} readings each "
        f"every {interval:g} s, broker {redact_url(broker)}")
    t0 = time.monotonic()
    interrupted = False
    try:
        fleet.start(broker, interval, count,
                    ("--timeout", f"{drain_timeout:g}", "--ack-timeout", f"{ack_timeout:g}"))
        fleet.wait(t0 + production + drain_timeout + 10.0)
    except KeyboardInterrupt:
        interrupted = True  # Ctrl-C or SIGTERM: stop the devices, report what they said
    finally:
        fleet.stop()
    reports = fleet.reports()
    figures: dict[str, Any] = {"engine": "micropython",
                               "seconds": round(time.monotonic() - t0, 2)}
    if interrupted:
        figures["interrupted"] = True
    return SimResult(reports, figures)


def run_cpython(data_dir: Path, fleet_dir: Path, n: int, interval: float, duration: float,
                broker: str, drain_timeout: float, count: int | None, procs: int,
                ack_timeout: float = 10.0, log: Callable[[str], None] = print) -> SimResult:
    if count is None:
        if interval <= 0:
            raise ConfigError("--interval 0 (as fast as possible) needs --count",
                              "give the readings per device, e.g. --count 100")
        count = max(1, math.ceil(duration / interval))
    ids = [f"load-{i:04d}" for i in range(n)]
    states = loadgen.load_or_create_states(fleet_dir, ids)
    keys = {st.dev: DeviceSigner(st.dev, st.secret).public_key for st in states}
    added = register_devices(data_dir, keys)
    log(f"simulate: {n} CPython devices ({added} newly registered) over {procs} processes, "
        f"{count} pre-signed readings each, interval {interval:g} s, "
        f"broker {redact_url(broker)}")
    cfg = loadgen.EngineConfig(broker, interval=interval,
                               duration=duration if interval > 0 else math.inf,
                               drain_timeout=drain_timeout, ack_timeout=ack_timeout,
                               downlink_key=downlink_public_key(data_dir))
    try:
        res = loadgen.run_engine(cfg, states, [count] * n, procs)
    finally:
        loadgen.save_states(fleet_dir, states)
    reports = [DeviceReport(dev, d["produced"], d["acknowledged"], summary=d)
               for dev, d in res.devices.items()]
    produced = res.produced
    figures: dict[str, Any] = {
        "engine": "cpython",
        "procs": res.procs,
        "publish_s": round(res.publish_s, 3),
        "publish_per_s": round(produced / res.publish_s, 1) if res.publish_s > 0 else None,
        "sign_s": round(res.sign_s, 3),
        "latency_p50_ms": _round(res.percentile(50)),
        "latency_p99_ms": _round(res.percentile(99)),
    }
    return SimResult(reports, figures)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


@contextlib.contextmanager
def running_gateway(data_dir: Path, broker: str, log_path: Path,
                    batch_interval: float = 0.5) -> Iterator[subprocess.Popen[bytes]]:
    """`iot-anchor run` as a child for the duration of the block (simulate --with-gateway);
    stopped with SIGTERM after it (it commits and acknowledges its open batch)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--data", str(data_dir), "--broker", broker,
             "--batch-interval", f"{batch_interval:g}",
             *(["--store", store] if (store := default_store()) else [])],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def said() -> str:
        with open(log_path, "rb") as f:
            f.seek(start)
            return f.read().decode(errors="replace")

    try:
        deadline = time.monotonic() + 30
        while "connected to" not in said():
            if proc.poll() is not None or time.monotonic() > deadline:
                last = (said().strip().splitlines() or ["no output"])[-1]
                raise AnchorError(f"the gateway did not connect to {broker}: {last}",
                                  f"see {log_path}; is the data dir initialised and the "
                                  "broker running?")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
