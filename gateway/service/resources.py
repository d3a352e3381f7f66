"""What the service reports of its own process."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB. VmHWM where Linux has it: `ru_maxrss`
    also keeps the peak of the process image before `exec`, which for a gateway started by a
    big parent (a benchmark holding 600,000 signed readings) is the parent's size."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
