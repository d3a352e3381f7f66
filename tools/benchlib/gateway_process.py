"""The gateway under test: `iot-anchor run` as a subprocess with its log in a file, and the
figures its log gives (the INFO line per batch, the peak RSS it reports when it stops)."""

from __future__ import annotations

import math
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from benchlib.script import iot_anchor_command
from gateway.errors import AnchorError
from gateway.sim.simulate import stop_process

BATCH_RE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO iot_anchor\.service: batch: (\d+) readings, "
    r"entry \S+, root \S+, commit ([\d.]+) ms"
)
STOPPED_RSS_RE = re.compile(r"stopped: .* peak RSS (\d+) MB")


def start_gateway(data: Path, broker_url: str, batch_interval: float, batch_max: int,
                  log_out: IO[str], extra: tuple[str, ...] = ()) -> subprocess.Popen[Any]:
    """Start `iot-anchor run` on the data dir `data`, its output into the open file `log_out`
    (`extra`: more options, e.g. --http); `wait_connected` tells when it is up,
    `stop_gateway` stops it."""
    return subprocess.Popen(
        iot_anchor_command("run", "--data", str(data), "--broker", broker_url,
                           "--batch-interval", f"{batch_interval:g}",
                           "--batch-max", str(batch_max), *extra),
        stdout=log_out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def start_mirror(url: str, data: Path, vkey: str, log_out: IO[str]) -> subprocess.Popen[Any]:
    """`iot-anchor mirror URL --follow` into the data dir `data` (the load next to a paced
    phase: `bench.py --mirror`), at the lowest CPU priority (nice 19): it re-verifies every
    signature, about 0.6 of the 2 cores at 10,000 readings/s, which a mirror on a machine of
    its own does not take from the gateway; here it gets the cores the gateway leaves, falls
    behind, and the bench reports how long after the last publish it holds every reading."""
    return subprocess.Popen(
        ["nice", "-n", "19", *iot_anchor_command(
            "mirror", url, "--data", str(data), "--gateway-key", vkey, "--follow",
            "--interval", "1")],
        stdout=log_out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_connected(gw: subprocess.Popen[Any], logf: Path, timeout: float = 30.0) -> None:
    """Return once the gateway's log says it connected; raise AnchorError if it exits first
    or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while "connected to" not in logf.read_text():
        if gw.poll() is not None or time.monotonic() > deadline:
            raise AnchorError(f"the gateway did not connect (exit {gw.poll()})",
                              f"see its log {logf}")
        time.sleep(0.1)


def stop_gateway(proc: subprocess.Popen[Any], logf: Path, grace: float = 30.0) -> float:
    """SIGTERM (then SIGKILL after `grace`); returns the gateway's lifetime peak RSS in MB,
    shutdown included, from its last log line (its own VmHWM; not wait4's ru_maxrss, which
    keeps the size of this big benchmark process that forked it), NaN if it gave none."""
    stop_process(proc, grace, signal.SIGTERM)
    m = STOPPED_RSS_RE.search(logf.read_text())
    return float(m.group(1)) if m else math.nan


@dataclass
class Batches:
    """The batches with readings in a gateway's log, in commit order."""

    sizes: list[int] = field(default_factory=list)
    commit_ms: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)  # log time of each batch's commit
    last_wall: float = math.nan  # log time of the last batch with readings

    def steady_rate(self, batch_max: int) -> float:
        """Readings/s between the first and the last full batch (closed by --batch-max):
        the rate once the pipeline runs, without the start and the last partial batch's wait
        for the batch interval. NaN with fewer than 3 full batches."""
        full = [i for i, n in enumerate(self.sizes) if n >= batch_max]
        if len(full) < 3:
            return math.nan
        a, b = full[0], full[-1]
        span = self.walls[b] - self.walls[a]
        return sum(self.sizes[a + 1:b + 1]) / span if span > 0 else math.nan

    @classmethod
    def parse(cls, text: str) -> Batches:
        b = cls()
        for line in text.splitlines():
            m = BATCH_RE.match(line)
            if not m or int(m.group(2)) == 0:
                continue
            b.sizes.append(int(m.group(2)))
            b.commit_ms.append(float(m.group(3)))
            b.last_wall = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            b.walls.append(b.last_wall)
        return b
