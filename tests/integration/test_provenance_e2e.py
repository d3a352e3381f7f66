"""Issue 14 end to end: readings signed by the real MicroPython firmware are anchored, exported
as a dataset, a tiny model is fitted on the Parquet (numpy) and registered as version 1, a
refit as version 2; in a fresh directory with no database both verify; `model history`
shows the two versions linked to the dataset."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import FIRMWARE, ROOT, run_mp

np = pytest.importorskip("numpy")

MAIN = str(FIRMWARE / "main.py")


def gw(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=env)


def ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, (p.args, p.stdout, p.stderr)
    return p.stdout


def fit(table_path: Path, model_dir: Path, ridge: float) -> None:
    """temp ~ a + b * hr by least squares (ridge-regularised), saved as weights.npy."""
    t = pq.read_table(table_path, columns=["hr", "temp"])
    hr = np.asarray(t.column("hr").to_pylist(), dtype=float)
    temp = np.asarray(t.column("temp").to_pylist(), dtype=float)
    x = np.stack([np.ones_like(hr), hr], axis=1)
    w = np.linalg.solve(x.T @ x + ridge * np.eye(2), x.T @ temp)
    model_dir.mkdir(exist_ok=True)
    np.save(model_dir / "weights.npy", w)
    (model_dir / "config.json").write_text(json.dumps({"features": ["hr"], "ridge": ridge}))


def test_firmware_readings_to_a_verified_model(micropython: str, tmp_path: Path) -> None:
    work = tmp_path / "hospital"
    work.mkdir()
    data = work / "anchor-data"
    vkey = ok(gw("init", "--data", str(data))).strip().splitlines()[-1]
    lines = []
    for k, dev in enumerate(["icu-bed-1", "icu-bed-2"]):
        d = work / dev
        p = run_mp(micropython, MAIN, "keygen", "--dir", str(d), "--id", dev)
        assert p.returncode == 0, p.stderr
        ok(gw("device", "add", dev, "--public-key", p.stdout.strip().splitlines()[-1],
              "--data", str(data)))
        for i in range(12):
            hr = 60 + 3 * i + 5 * k
            reading = {"hr": hr, "temp": round(36.0 + 0.02 * hr + 0.05 * (i % 3), 2)}
            p = run_mp(micropython, MAIN, "sign", "--dir", str(d), "--data",
                       json.dumps(reading), "--ts", str(1_735_689_600 + 60 * i))
            assert p.returncode == 0, p.stderr
            lines.append(p.stdout.strip().splitlines()[-1])
    feed = work / "readings.hex"
    feed.write_text("\n".join(lines) + "\n")
    res = json.loads(ok(gw("ingest", str(feed), "--json", "--data", str(data))))
    assert res["accepted"] == 24

    out = work / "icu-training-set"
    ds = json.loads(ok(gw("dataset", "export", str(out), "--name", "icu-2025-01", "--json",
                          "--data", str(data))))
    assert ds["rows"] == 24

    model = work / "fever-model"
    fit(out / "data" / "readings.parquet", model, ridge=0.0)
    v1 = work / "fever-1.provenance.json"
    ok(gw("model", "register", str(model), "--name", "fever", "--version", "1", "--dataset",
          str(out), "--out", str(v1), "--data", str(data)))
    fit(out / "data" / "readings.parquet", model, ridge=0.5)  # the refit
    v2 = work / "fever-2.provenance.json"
    ok(gw("model", "register", str(model), "--name", "fever", "--version", "2", "--dataset",
          str(ds["entry"]), "--out", str(v2), "--data", str(data)))
    hist = json.loads(ok(gw("model", "history", "fever", "--json", "--data", str(data))))
    assert [(h["version"], h["parent"]) for h in hist] == [("1", None), ("2", "1")]
    for h in hist:
        assert h["datasets"] == [{"entry": ds["entry"], "name": "icu-2025-01", "rows": 24}]
    assert ok(gw("ledger", "verify", "--data", str(data))).startswith("ledger OK")

    # the auditor: a fresh directory, no database, only what was handed over and the vkey
    audit = tmp_path / "auditor"
    audit.mkdir()
    shutil.copytree(out, audit / "dataset")
    shutil.copytree(model, audit / "model")
    shutil.copy(v2, audit / "fever-2.provenance.json")
    nodb = str(audit / "no-such-data-dir")
    line = ok(gw("dataset", "verify", "dataset", "--gateway-key", vkey, "--data", nodb,
                 cwd=audit))
    assert line.startswith("OK: dataset 'icu-2025-01', 24 rows"), line
    line = ok(gw("model", "verify", "model", "--provenance", "fever-2.provenance.json",
                 "--gateway-key", vkey, "--data", nodb, cwd=audit))
    assert line.startswith("OK: fever 2 (2 files"), line
    assert not Path(nodb).exists()
    # version 1's files against version 2's receipt: the first differing file is named
    fit(audit / "dataset" / "data" / "readings.parquet", audit / "model", ridge=0.0)
    p = gw("model", "verify", "model", "--provenance", "fever-2.provenance.json",
           "--gateway-key", vkey, cwd=audit)
    assert p.returncode == 1 and p.stdout.startswith("FAIL: model/config.json: differs"), \
        p.stdout
