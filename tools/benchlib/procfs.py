"""CPU time and memory of live processes and of the whole machine, read from /proc (Linux).

Each reader requires the process to be alive: a pid that has gone raises OSError, except in
`children` and `tree_cpu_s`, which skip it, and `tree_rss_mb`, which skips gone children.
"""

from __future__ import annotations

import math
import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a live process, in seconds (/proc/<pid>/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_mb(pid: int, key: str) -> float:
    """A size line of /proc/<pid>/status (`VmHWM`: peak resident set; `VmRSS`: resident set
    now), in MB; NaN if the process has no such line (a kernel thread)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return math.nan


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (the gateway's verifier workers)."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def tree_cpu_s(pid: int, base: dict[int, float] | None = None) -> dict[int, float]:
    """CPU seconds per process of `pid` and its children (minus `base`, per pid)."""
    out = {}
    for p in [pid, *children(pid)]:
        try:
            out[p] = proc_cpu_s(p) - (base or {}).get(p, 0.0)
        except OSError:
            pass
    return out


def tree_rss_mb(pid: int) -> float:
    """VmRSS of a process plus its children's (the verifier workers), in MB; a process that
    has exited and not been reaped yet counts 0."""
    os.stat(f"/proc/{pid}/task")  # OSError once `pid` is gone
    total = 0.0
    for p in [pid, *children(pid)]:
        try:
            rss = status_mb(p, "VmRSS")
        except OSError:
            continue
        if not math.isnan(rss):
            total += rss
    return total


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all processes, /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return (sum(v[:8]) - idle) / CLK_TCK
