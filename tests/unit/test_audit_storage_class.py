"""`ledger verify` trusts no column's storage class either.

SQLite lets anyone with the file store any value in any column: a reading's COSE bytes can be
replaced by text (valid UTF-8 or not), a number, or a blob in an INTEGER column. Each such
change must make the audit name the row (exit 1), never stop it with an exception (a
traceback, or exit 2 "auditing the database failed" as if the disk were at fault).
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.audit.store_audit import audit
from gateway.fleet import registry
from gateway.ingest.pipeline import Pipeline
from gateway.storage.store import DB_NAME, Store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers_readings import Device  # noqa: E402

CLI = [sys.executable, "-m", "gateway"]


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("types") / "data"
    store, _ = Store.create(d)
    devs = [Device("dev-0"), Device("dev-1")]
    for dv in devs:
        registry.add(store, dv.id, dv.public_bytes)
    with Pipeline(store, batch_max=16, workers=2) as p:
        p.submit([m for _ in range(40) for dv in devs for m in dv.readings(1)])
        p.commit()
    res = audit(store, store.vkey())
    assert res.ok, res.problems
    store.close()
    return d


COLUMNS = [
    ("readings", "cose", "id = 5"),
    ("readings", "dev", "id = 5"),
    ("readings", "seq", "id = 5"),
    ("readings", "batch", "id = 5"),
    ("entries", "body", "i = 3"),
    ("entries", "hash", "i = 3"),
    ("batches", "root", "entry = 3"),
    ("batches", "nodes", "entry = 3"),
    ("batches", "first", "entry = 3"),
    ("batches", "n", "entry = 3"),
    ("checkpoints", "note", "size = 3"),
    ("checkpoints", "root", "size = 3"),
    ("ledger_nodes", "hash", "level = 0 AND idx = 1"),
    ("devices", "key", "id = 'dev-1'"),
    ("devices", "entry", "id = 'dev-1'"),
    ("devices", "readings", "id = 'dev-1'"),
    ("devices", "last_seq", "id = 'dev-1'"),
    ("devices", "upto", "id = 'dev-1'"),
    ("device_keys", "key", "dev = 'dev-0'"),
    ("device_keys", "from_entry", "dev = 'dev-0'"),
    ("device_keys", "until_entry", "dev = 'dev-0'"),
    ("meta", "value", "key = 'ledger_range'"),
]
VALUES = [
    ("int", "7"),
    ("real", "1.5"),
    ("text", "'x'"),
    ("text-not-utf8", "CAST(X'ff00fe' AS TEXT)"),
    ("blob", "X'ff00'"),
]


def tampered(ledger: Path, tmp_path: Path, table: str, column: str, where: str,
             value: str) -> Path | None:
    d = tmp_path / "copy"
    shutil.copytree(ledger, d)
    con = sqlite3.connect(d / DB_NAME)
    try:
        n = con.execute(f"UPDATE {table} SET {column} = {value} WHERE {where}").rowcount
        con.commit()
    except sqlite3.IntegrityError:  # a NOT NULL or CHECK constraint refuses this value
        return None
    finally:
        con.close()
    assert n == 1
    return d


@pytest.mark.parametrize("value", [v for _, v in VALUES], ids=[n for n, _ in VALUES])
@pytest.mark.parametrize("table,column,where", COLUMNS, ids=[f"{t}.{c}" for t, c, _ in COLUMNS])
def test_a_value_of_another_storage_class_is_named(ledger: Path, tmp_path: Path, table: str,
                                                   column: str, where: str, value: str) -> None:
    d = tampered(ledger, tmp_path, table, column, where, value)
    if d is None:
        return  # the schema itself refuses this value: nothing to audit
    for limit in (1, 100):  # the first problem, and the audit run to its end
        with Store.open(d) as s:
            res = audit(s, s.vkey(), max_problems=limit)
        assert not res.ok, f"the audit passed with {table}.{column} = {value}"
        assert res.problems[0].startswith(f"{table} "), res.problems


def test_cli_exits_1_naming_a_reading_stored_as_text(ledger: Path, tmp_path: Path) -> None:
    # what `sqlite3 ledger.db "UPDATE readings SET cose = substr(cose, 1, 40) || ..."` does:
    # the concatenation makes TEXT of the bytes, which are not UTF-8
    d = tampered(ledger, tmp_path, "readings", "cose", "id = 3",
                 "substr(cose, 1, 40) || X'00' || substr(cose, 42)")
    assert d is not None
    with sqlite3.connect(d / DB_NAME) as con:
        assert con.execute("SELECT typeof(cose) FROM readings WHERE id = 3").fetchone() == ("text",)
    p = subprocess.run([*CLI, "ledger", "verify", "--data", str(d)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    assert p.stdout.startswith("ledger BROKEN: readings 3:"), p.stdout
