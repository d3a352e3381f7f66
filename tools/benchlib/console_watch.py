"""`bench.py --console`: what an operator's browser open on the console's overview and a
Prometheus scraping every 5 s ask of the gateway while it is measured."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from typing import Any

from benchlib.stats import percentile

OVERVIEW_S = 2.0  # the overview page polls /api/overview this often
SCRAPE_S = 5.0
# what a browser loads once when it opens the overview
PAGE = ("/console/", "/console/static/console.css", "/console/static/common.js",
        "/console/static/overview.js", "/console/static/vendor/uPlot.iife.min.js")


class ConsoleWatcher:
    """A thread that GETs the overview's page once, then /api/overview every 2 s and /metrics
    every 5 s until `stop()`; `figures()` gives the requests, failures and latencies."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.ms: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-watch", daemon=True)
        self._thread.start()

    def _get(self, path: str) -> None:
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as r:
                r.read()
        except (urllib.error.URLError, OSError) as e:
            self.failures.append(f"{path}: {e}")
            return
        self.ms.append((time.perf_counter() - t0) * 1000)

    def _run(self) -> None:
        for path in PAGE:
            self._get(path)
        t0 = time.monotonic()
        k_overview = k_scrape = 0
        while not self._stop.is_set():
            now = time.monotonic() - t0
            if now >= k_overview * OVERVIEW_S:
                self._get("/api/overview")
                k_overview += 1
            if now >= k_scrape * SCRAPE_S:
                self._get("/metrics")
                k_scrape += 1
            nxt = min(k_overview * OVERVIEW_S, k_scrape * SCRAPE_S)
            self._stop.wait(max(0.0, nxt - (time.monotonic() - t0)))

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(15)
        ms = sorted(self.ms)
        return {"console_requests": len(ms), "console_failures": len(self.failures),
                "console_p50_ms": percentile(ms, 50), "console_p99_ms": percentile(ms, 99)}
