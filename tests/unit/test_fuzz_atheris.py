"""The coverage-guided decoder fuzzer (tools/fuzz_decoder.py, atheris) runs for a bounded time.

atheris has wheels for Linux x86_64 only; elsewhere this test is skipped and the hypothesis
fuzz tests (test_fuzz_decoder.py) stand alone. `make fuzz` runs both for longer.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.wire.cose import DECODE_REASONS

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 20


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                    reason="atheris is not installed (wheels exist for Linux x86_64 only)")
def test_atheris_fuzzes_the_decoder_without_a_crash(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "fuzz_decoder.py"), "--seconds", str(SECONDS),
         "--corpus", str(tmp_path / "corpus")],
        cwd=tmp_path, capture_output=True, text=True, timeout=SECONDS + 120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(tmp_path.glob("crash-*")), proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    print(proc.stdout.strip().splitlines()[-2])
    assert summary["crashes"] == 0
    assert summary["inputs"] > 20_000  # about 10 k/s on this machine
    assert summary["accepted"] > 0
    seen = set(summary["rejected"])
    assert seen <= set(DECODE_REASONS)
    # Coverage guidance reaches deep into the structure, not just the first byte checks.
    assert {"cbor_malformed", "not_tag18", "bad_protected", "bad_payload",
            "bad_signature_length", "dev_kid_mismatch"} <= seen, seen
