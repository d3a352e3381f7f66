"""Record entries (gateway.ledger.entry.RECORD_KINDS), their storage, receipts and audit hook,
with a kind registered by the test itself; schema migration 1 -> 2 keeps a v1 ledger."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from gateway.audit import store_audit
from gateway.audit.store_audit import audit
from gateway.errors import ReceiptError
from gateway.fleet import registry
from gateway.ledger import entry as E
from gateway.ledger.receipt import build_entry_receipt, verify_entry_receipt
from gateway.storage.store import DB_NAME, MIGRATIONS, SCHEMA_VERSION, Store

KEY = bytes.fromhex("04" + "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
                    + "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5")


def _check_note(fields: dict[str, Any]) -> None:
    if type(fields["text"]) is not str or not fields["text"]:
        raise E.EntryError("note entry field 'text' must be non-empty text")


@pytest.fixture
def note_kind(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(E.RECORD_KINDS, "testnote", E.RecordKind(
        frozenset({"text"}), frozenset({"tags"}), _check_note, max_size=300))
    yield


def test_record_entries_encode_strictly(note_kind: None) -> None:
    raw = E.record_entry(0, E.ZERO_HASH, "testnote", {"text": "hi", "tags": ["a"]}, 5)
    e = E.decode_entry(raw)
    assert isinstance(e, E.RecordEntry)
    assert (e.i, e.kind, e.t, e.fields) == (0, "testnote", 5, {"text": "hi", "tags": ["a"]})
    assert raw == cbor2.dumps(cbor2.loads(raw), canonical=True)
    bad = [
        {"i": 0, "prev": E.ZERO_HASH, "kind": "testnote", "t": 1},  # text missing
        {"i": 0, "prev": E.ZERO_HASH, "kind": "testnote", "t": 1, "text": ""},  # check fails
        {"i": 0, "prev": E.ZERO_HASH, "kind": "testnote", "t": 1, "text": "x", "z": 1},
        {"i": 0, "prev": E.ZERO_HASH, "kind": "nosuchkind", "t": 1, "text": "x"},
        {"i": 0, "kind": "testnote", "t": 1, "text": "x"},  # no prev
    ]
    for obj in bad:
        with pytest.raises(E.EntryError):
            E.decode_entry(cbor2.dumps(obj, canonical=True))
    with pytest.raises(E.EntryError, match="over the limit"):
        E.record_entry(0, E.ZERO_HASH, "testnote", {"text": "x" * 400}, 5)
    # not the deterministic encoding: refused
    loose = cbor2.dumps({"text": "hi", "i": 0, "prev": E.ZERO_HASH, "kind": "testnote", "t": 5})
    with pytest.raises(E.EntryError, match="deterministic"):
        E.decode_entry(loose)


def test_store_appends_lists_and_proves_records(tmp_path: Path, note_kind: None) -> None:
    store, vkey = Store.create(tmp_path / "d")
    with store:
        registry.add(store, "dev-1", KEY)
        signer = store.load_signer()
        i, cp = store.append_record(signer, "testnote", {"text": "first"})
        j, _ = store.append_record(signer, "testnote", {"text": "second", "tags": []})
        assert (i, j) == (1, 2)
        assert [e.fields["text"] for e in store.records("testnote")] == ["first", "second"]
        with pytest.raises(E.EntryError):
            store.append_record(signer, "testnote", {"text": ""})
        assert store.entry_count() == 3  # the refused record wrote nothing
        receipt = build_entry_receipt(**store.entry_receipt_parts(1))  # type: ignore[arg-type]
        assert store.entry_receipt_parts(9) is None
        got = verify_entry_receipt(receipt, vkey)
        assert got.entry.i == 1 and got.tree_size == 3
        assert audit(store, vkey, workers=1).ok
    for change, why in [(lambda r: r.update(kind="batch"), "kind"),
                        (lambda r: r["entry"].update(index=2), "i=1"),
                        (lambda r: r.update(checkpoint=r["checkpoint"].replace("3\n", "2\n")),
                         "checkpoint")]:
        tampered = {**receipt, "entry": dict(receipt["entry"])}
        change(tampered)
        with pytest.raises(ReceiptError, match=why):
            verify_entry_receipt(tampered, vkey)


def test_audit_runs_each_kinds_own_check(tmp_path: Path, note_kind: None,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[int]] = []

    def check(auditor: store_audit.Auditor, entries: list[E.RecordEntry]) -> None:
        seen.append([e.i for e in entries])
        if any(e.fields["text"] == "bad" for e in entries):
            auditor.problem("entries", entries[-1].i, "a note says bad")

    monkeypatch.setitem(store_audit.RECORD_AUDITS, "testnote", check)
    store, vkey = Store.create(tmp_path / "d")
    with store:
        signer = store.load_signer()
        store.append_record(signer, "testnote", {"text": "fine"})
        assert audit(store, vkey, workers=1).ok and seen == [[0]]
        store.append_record(signer, "testnote", {"text": "bad"})
        res = audit(store, vkey, workers=1)
        assert res.problems == ["entries 1: a note says bad"]


V1_ENTRIES = ("CREATE TABLE entries ( i INTEGER PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN "
              "('batch', 'device')), body BLOB NOT NULL, hash BLOB NOT NULL )")


def test_a_version_1_ledger_is_migrated_and_keeps_its_entries(tmp_path: Path) -> None:
    assert V1_ENTRIES in " ".join(MIGRATIONS[0].split())  # the table as schema 1 made it
    d = tmp_path / "d"
    store, vkey = Store.create(d)
    with store:
        registry.add(store, "dev-1", KEY)
    # rebuild the file as schema 1 wrote it (its tables only, MIGRATIONS[0]), with the same rows
    db = d / DB_NAME
    with contextlib.closing(sqlite3.connect(db)) as c:
        rows = c.execute("SELECT i, kind, body, hash FROM entries").fetchall()
        v1_tables = {"meta", "entries", "ledger_nodes", "batches", "readings", "devices",
                     "device_keys", "checkpoints", "events", "rejected"}
        kept = {t: (c.execute(f"SELECT * FROM {t}").fetchall(),
                    [r[1] for r in c.execute(f"PRAGMA table_info({t})")]) for t in v1_tables}
    for f in (db, db.with_name(DB_NAME + "-wal"), db.with_name(DB_NAME + "-shm")):
        f.unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(db)) as c, c:
        c.executescript(MIGRATIONS[0])
        for t, (data, cols) in kept.items():
            v1_cols = [r[1] for r in c.execute(f"PRAGMA table_info({t})")]
            pick = [cols.index(col) for col in v1_cols]
            c.executemany(f"INSERT INTO {t} VALUES ({', '.join('?' * len(v1_cols))})",
                          [tuple(r[k] for k in pick) for r in data])
        c.execute("PRAGMA user_version=1")
        with pytest.raises(sqlite3.IntegrityError):  # schema 1 allowed only batch and device
            c.execute("INSERT INTO entries VALUES (9, 'rules', x'00', x'00')")
    with Store.open(d) as s:
        assert s.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert s.query("SELECT i, kind, body, hash FROM entries") == rows
        assert audit(s, vkey, workers=1).ok


def test_cli_receipt_of_an_entry_and_its_check(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    d = str(tmp_path / "d")
    assert main(["init", "--data", d]) == 0
    vkey = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["device", "add", "dev-1", "--public-key", KEY.hex(), "--data", d]) == 0
    capsys.readouterr()
    assert main(["receipt", "--entry", "0", "--data", d]) == 0
    path = tmp_path / "r.json"
    path.write_text(capsys.readouterr().out)
    assert main(["verify-receipt", str(path), "--gateway-key", vkey]) == 0
    assert capsys.readouterr().out.startswith("OK: ledger entry 0 (device) is in the checkpoint")
    assert main(["receipt", "--entry", "7", "--data", d]) == 2
    assert "has no entry 7 (it has 1)" in capsys.readouterr().err
    assert main(["receipt", "dev-1", "0", "--entry", "0", "--data", d]) == 2
    assert "not both" in capsys.readouterr().err
    other = tmp_path / "o"
    assert main(["init", "--data", str(other)]) == 0
    other_vkey = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["verify-receipt", str(path), "--gateway-key", other_vkey]) == 1
    assert capsys.readouterr().out.startswith("FAIL: checkpoint")
