"""Interop of an exported dataset: pyarrow and pandas read the data, mlcroissant validates
the metadata and yields the records (the independent checkers of issue 14)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers_provenance import DATA, anchored_ledger

from gateway.cli import main


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("interop")
    anchored_ledger(base / "data", devices=2, per_device=15)
    o = base / "out"
    assert main(["dataset", "export", str(o), "--name", "icu-monitors", "--data",
                 str(base / "data")]) == 0
    return o


def test_pyarrow_and_pandas_read_the_data(out: Path) -> None:
    pd = pytest.importorskip("pandas")
    table = pq.read_table(out / DATA)
    assert table.num_rows == 30
    df = pd.read_parquet(out / "data")
    assert list(df.columns) == ["device", "seq", "ts", "hr", "spo2", "temp", "leaf", "entry"]
    assert len(df) == 30 and str(df["ts"].dtype).startswith("datetime64[ms, UTC]")
    assert df["spo2"].isna().sum() == 20 and df["ts"].isna().sum() == 6
    assert (df.groupby("device")["seq"].apply(list) == [list(range(15))] * 2).all()


def test_mlcroissant_validates_and_yields_the_records(out: Path) -> None:
    mlc = pytest.importorskip("mlcroissant")
    p = subprocess.run([sys.executable, "-m", "mlcroissant", "validate", "--jsonld",
                        str(out / "croissant.json")], capture_output=True, text=True,
                       timeout=300)
    if "No module named mlcroissant.__main__" in p.stderr:
        p = subprocess.run([str(Path(sys.executable).parent / "mlcroissant"), "validate",
                            "--jsonld", str(out / "croissant.json")], capture_output=True,
                           text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "error" not in p.stderr.lower().replace("errors", ""), p.stderr[-2000:]
    ds = mlc.Dataset(jsonld=str(out / "croissant.json"))
    records = list(ds.records("readings"))
    assert len(records) == 30
    first = records[0]
    assert first["readings/device"] == b"ward-0" and first["readings/seq"] == 0
    assert first["readings/temp"] == 36.0 and len(first["readings/leaf"]) == 32
