"""Heap limit: the device loop, from .mpy files compiled with the mpy-cross matching the binary,
runs 50 readings end to end (Mosquitto, the gateway service `iot-anchor run`, acks after the
ledger commit) under `micropython -X heapsize=64k`, the size of what a board without PSRAM
has left once Wi-Fi is up, with margin. The rig (tools/bench_firmware_boards.py LoopRig) is the
one `make bench-firmware` uses for its smallest-heap search.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from bench_firmware_boards import LoopRig  # noqa: E402

READINGS = 50
HEAP = 64  # KiB


# Measured (make bench-firmware, loop_heap; docs/boards.md "Memory"): after the firmware's heap
# diet the loop needs ~81 KiB on this 64-bit Unix port (101 before) and 58 KiB on a 32-bit build
# of the same port (74 before), so a board-sized build fits in 64 KiB but this binary does not;
# frozen into the binary, the loop runs in 44 KiB. Strict: once the firmware fits, the XPASS
# fails the run and this marker must go.
# 128 KiB: the same run where it fits today, so the rig and the .mpy loop stay checked.
@pytest.mark.parametrize("heap", [
    pytest.param(HEAP, marks=pytest.mark.xfail(
        strict=True, raises=AssertionError,
        reason="the device loop does not fit in 64 KiB on the 64-bit Unix port yet (needs ~81 "
        "KiB; 58 KiB on a 32-bit build); see make bench-firmware")),
    128,
])
def test_device_loop_50_readings_in_limited_heap(micropython: str, tmp_path: Path,
                                                 heap: int) -> None:
    with LoopRig(micropython, tmp_path, devices=1) as rig:
        ok, summary = rig.run_loop(heap, READINGS, timeout=300)
        assert "error" not in summary or summary["error"] is None, (
            f"the device loop failed under -X heapsize={heap}k: {summary}; "
            "see tools/bench_firmware_boards.py (make bench-firmware) for the smallest heap it "
            "needs and the RAM each module takes")
        assert ok, summary
        assert summary["produced"] == READINGS and summary["acked"] >= READINGS
        assert summary["outbox"] == 0 and summary["dropped"] == 0
        assert summary["heap_max"] <= heap * 1024
        # every reading is in the ledger, once
        p = subprocess.run([sys.executable, "-m", "gateway", "device", "list", "--json",
                            "--data", str(rig.data)], capture_output=True, text=True, timeout=60)
        rows = {r["id"]: r for r in json.loads(p.stdout)}
        assert rows["heap-00"]["readings"] == READINGS
        assert rows["heap-00"]["last_seq"] == READINGS - 1
    # the loop really ran from the compiled files: no source next to them
    assert not list((rig.fw / "anchor").glob("*.py"))
    assert (rig.fw / "anchor" / "device.mpy").is_file()
