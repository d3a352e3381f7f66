"""The provenance commands (another branch's Store methods, written in portable SQL) on a
PostgreSQL store, unchanged: `dataset export` from it, `dataset verify` of the result,
`model register`, and `ledger verify` with the dataset and model entries' own audits; then the
same export from a SQLite copy of the ledger (`store copy`) gives the same rows and root."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers_provenance import DATA, anchored_ledger

from gateway.cli import main
from gateway.storage import location


def test_dataset_export_verify_and_audit_on_postgresql(tmp_path: Path, pg_url: str,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    monkeypatch.setattr(location, "command_line_store", pg_url)  # Store.create(DIR) -> PG
    data = tmp_path / "data"
    vkey, _devs, _msgs = anchored_ledger(data)
    monkeypatch.setattr(location, "command_line_store", None)
    d = ["--data", str(data), "--store", pg_url]
    out = tmp_path / "out"
    assert main(["dataset", "export", str(out), "--name", "ward-7", "--json", *d]) == 0
    exported = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["dataset", "verify", str(out), "--gateway-key", vkey]) == 0
    assert capsys.readouterr().out.startswith("OK")
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights" * 100)
    assert main(["model", "register", str(model), "--name", "m", "--version", "1",
                 "--dataset", str(out), "--out", str(tmp_path / "m.json"), *d]) == 0
    capsys.readouterr()
    assert main(["ledger", "verify", *d]) == 0
    assert "ledger OK" in capsys.readouterr().out
    # the same dataset from a SQLite copy of the ledger
    lite = tmp_path / "lite.db"
    assert main(["store", "copy", "--from", pg_url, "--to", f"sqlite:{lite}",
                 "--data", str(data)]) == 0
    out2 = tmp_path / "out2"
    assert main(["dataset", "export", str(out2), "--name", "ward-7", "--json", "--data",
                 str(data), "--store", f"sqlite:{lite}"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["rows"] == exported["rows"] == 120
    assert pq.read_table(out2 / DATA).equals(pq.read_table(out / DATA))
