"""The PostgreSQL store (gateway/storage/postgres.py under gateway/storage/store.py): the same
bytes as SQLite for the same input, the SQL translation, and the failures: an unreachable
server, a wrong schema version, a non-empty database, a connection (and with it the sequencer
lock) lost in the middle of a commit."""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.audit.store_audit import audit
from gateway.errors import ConfigError, StorageError
from gateway.fleet import registry
from gateway.ingest import pipeline as pipeline_mod
from gateway.ingest.pipeline import Pipeline
from gateway.ledger import note
from gateway.ledger.receipt import build_entry_receipt, build_receipt, receipt_to_json
from gateway.sim.postgres import PrivatePostgres
from gateway.storage import postgres as pg_engine
from gateway.storage import store as store_mod
from gateway.storage.store import SCHEMA_VERSION, Store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers_readings import Device  # noqa: E402

LEDGER_TABLES = {
    "entries": "SELECT i, kind, body, hash FROM entries ORDER BY i",
    "ledger_nodes": "SELECT level, idx, hash FROM ledger_nodes ORDER BY level, idx",
    "batches": "SELECT entry, first, n, root, nodes FROM batches ORDER BY entry",
    "readings": "SELECT id, dev, seq, batch, cose FROM readings ORDER BY id",
    "checkpoints": "SELECT size, root, note FROM checkpoints ORDER BY size",
    "devices": "SELECT id, key, status, entry, readings, last_seq, upto FROM devices ORDER BY id",
    "device_keys": "SELECT dev, key, from_entry, until_entry FROM device_keys "
                   "ORDER BY dev, from_entry",
    "ledger_range": "SELECT CAST(value AS BLOB) FROM meta WHERE key = 'ledger_range'",
}


def _rows(s: Store, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in s.query(sql)]


def _scenario(s: Store, url: str | None, devs: list[Device], msgs: list[list[bytes]]
              ) -> list[str]:
    """The same input, in the same order: registrations, batches with duplicates, gaps, late
    fills, an equivocation, a chain break, rejections, a rotation and a revocation. Returns
    the commits' outcomes and acks, as text."""
    log: list[str] = []
    for d in devs[:3]:
        registry.add(s, d.id, d.public_bytes)
    with Pipeline(s, batch_max=64, workers=1, processes=False) as p:
        for chunk in msgs:
            out = p.submit(chunk)
            r = p.commit()
            log.append(repr([(o.status, o.reason, o.dev, o.seq) for o in out]))
            if r is not None:
                log.append(repr((r.entries, r.readings, r.size, sorted(r.acks.items()))))
        with Store.open(s.data_dir, store=url) as cli:  # as `device` commands would
            registry.rotate(cli, devs[0].id, devs[3].public_bytes)
            registry.revoke(cli, devs[1].id)
        out = p.submit([devs[1].message(90, bytes(32))])  # revoked now
        log.append(repr([(o.status, o.reason) for o in out]))
        p.commit()
    return log


def _input(devs: list[Device]) -> list[list[bytes]]:
    a, b, c = devs[0], devs[1], devs[2]
    ra, rb, rc = a.readings(150), b.readings(40), c.readings(10)
    evil = a.message(5, bytes(32), {"t": 99})  # seq 5 again, other bytes
    broken = c.message(10, b"\x01" * 32)  # seq 10, its prev is not the hash of seq 9
    return [
        ra[:70] + rb[:10] + [b"junk", ra[3]],  # two batches (64 + 17), a duplicate, a reject
        rb[20:40] + rc[5:],  # a gap in b (10..19), c from seq 5
        rb[10:20] + rc[:5] + [evil, broken],  # late fills, an equivocation, a chain break
        ra[70:] + ra[:10],  # the rest of a, and duplicates
    ]


def _clock_users() -> list[Any]:
    """The store's modules that read the gateway clock (`now_ms`, from storage.core)."""
    return [m for name, m in sorted(sys.modules.items())
            if name.startswith("gateway.storage.") and hasattr(m, "now_ms")]


def test_sqlite_and_postgresql_give_the_same_bytes(tmp_path: Path, pg_url: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    key = note.generate_key()
    devs = [Device(f"eq{i}") for i in range(4)]
    msgs = _input(devs)
    stores: list[Store] = []
    logs: list[list[str]] = []
    for name, url in (("lite", None), ("pg", pg_url)):
        clock = itertools.count(1_750_000_000_000, 1000)  # the gateway timestamps, fixed
        for mod in (*_clock_users(), pipeline_mod):
            monkeypatch.setattr(mod, "now_ms", lambda clock=clock: next(clock))
        s, vkey = Store.create(tmp_path / name, url, key=key)
        stores.append(s)
        logs.append(_scenario(s, url, devs, msgs))
    lite, pg = stores
    assert (lite.engine, pg.engine) == ("sqlite", "postgresql")
    assert logs[0] == logs[1]
    for table, sql in LEDGER_TABLES.items():
        assert _rows(lite, sql) == _rows(pg, sql), table
    assert len(_rows(pg, LEDGER_TABLES["readings"])) == 201  # the chain break is anchored
    assert pg.rejected_counts() == lite.rejected_counts() == {
        "equivocation": 1, "not_tag18": 1, "revoked_device": 1}
    assert pg.gaps() == lite.gaps()
    events = "SELECT kind, dev, seq FROM events ORDER BY id"
    assert pg.query(events) == lite.query(events) == [
        ("equivocation", "eq0", 5), ("chain_break", "eq2", 10)]
    for dev, seq in lite.query("SELECT dev, seq FROM readings ORDER BY id"):
        one = receipt_to_json(build_receipt(**lite.receipt_parts(dev, seq)))
        assert receipt_to_json(build_receipt(**pg.receipt_parts(dev, seq))) == one
    for i in range(lite.entry_count()):
        assert receipt_to_json(build_entry_receipt(**pg.entry_receipt_parts(i))) == \
            receipt_to_json(build_entry_receipt(**lite.entry_receipt_parts(i)))
    for s in stores:
        res = audit(s, vkey, workers=1)
        assert res.ok, res.problems
        assert res.readings == 201
        s.close()


@pytest.mark.parametrize(("sql", "params", "want"), [
    ("SELECT a FROM t WHERE b = ? AND c = ?", True, "SELECT a FROM t WHERE b = %s AND c = %s"),
    ("SELECT '?', \"?\" FROM t WHERE x LIKE 'a%' AND y = ?", True,
     "SELECT '?', \"?\" FROM t WHERE x LIKE 'a%' AND y = %s"),
    ("SELECT 5 % 2 FROM t WHERE y = ?", True, "SELECT 5 %% 2 FROM t WHERE y = %s"),
    ("SELECT 5 % 2 FROM t", False, "SELECT 5 % 2 FROM t"),
    ("SELECT 'it''s ?' -- a ? comment\nFROM t WHERE y = ?", True,
     "SELECT 'it''s ?' -- a ? comment\nFROM t WHERE y = %s"),
    ("INSERT OR IGNORE INTO t (a) VALUES (?)", True,
     "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING"),
    ("CREATE TABLE x (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, b BLOB) WITHOUT ROWID",
     False, "CREATE TABLE x (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
            "n BIGINT NOT NULL, b BLOB)"),
])
def test_translation(sql: str, params: bool, want: str) -> None:
    assert pg_engine.translate(sql, params) == want


def test_translation_refuses_what_has_no_postgresql_form() -> None:
    with pytest.raises(StorageError, match="no PostgreSQL form") as info:
        pg_engine.translate("INSERT OR ROLLBACK INTO t VALUES (?)", True)
    assert "ON CONFLICT" in info.value.hint
    with pytest.raises(StorageError, match="no primary key"):
        pg_engine.translate("INSERT OR REPLACE INTO t VALUES (?)", True, lambda t: None)


def test_insert_or_replace_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """INSERT OR REPLACE (written for SQLite by other features) replaces on the primary key,
    with and without a column list, one row or many; a key-only table keeps its row."""
    s, _ = Store.create(tmp_path / "d", pg_url)
    with s.write() as c:
        c.execute("CREATE TABLE IF NOT EXISTS cosig (size INTEGER NOT NULL, witness TEXT NOT "
                  "NULL, line TEXT NOT NULL, PRIMARY KEY (size, witness))")
        c.execute("CREATE TABLE tags (name TEXT PRIMARY KEY)")
        c.execute("INSERT OR REPLACE INTO cosig (size, witness, line) VALUES (?, ?, ?)",
                  (1, "w", "old"))
        c.execute("INSERT OR REPLACE INTO cosig VALUES (?, ?, ?)", (1, "w", "new"))
        c.executemany("INSERT OR REPLACE INTO cosig (size, witness, line) VALUES (?,?,?)",
                      [(2, "w", "a"), (2, "v", "b"), (1, "w", "newer")])
        c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('witness_quorum', ?)", (2,))
        c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('witness_quorum', ?)", (3,))
        c.execute("INSERT OR REPLACE INTO tags VALUES (?)", ("x",))
        c.execute("INSERT OR REPLACE INTO tags VALUES (?)", ("x",))
    assert s.query("SELECT size, witness, line FROM cosig ORDER BY size, witness") == [
        (1, "w", "newer"), (2, "v", "b"), (2, "w", "a")]
    assert s.meta("witness_quorum") == "3" and s.query("SELECT name FROM tags") == [("x",)]
    s.close()


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    from gateway.sim.broker import free_port

    url = f"postgresql://anchor@127.0.0.1:{free_port()}/anchor"
    with pytest.raises(StorageError) as info:
        Store.create(tmp_path / "d", url)
    assert "cannot connect to PostgreSQL" in info.value.what and "server runs" in info.value.hint
    assert not (tmp_path / "d").exists()  # nothing made before the store was reachable


def test_wrong_schema_version_and_foreign_database(tmp_path: Path, postgres: PrivatePostgres,
                                                   pg_url: str) -> None:
    s, _ = Store.create(tmp_path / "d", pg_url)
    s.close()
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(f"UPDATE {pg_engine.SCHEMA_TABLE} SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(ConfigError, match="newer than this iot-anchor") as info:
        Store.open(tmp_path / "d", store=pg_url)
    assert info.value.hint == "upgrade iot-anchor"
    other = postgres.create_database("other")
    with psycopg.connect(other, autocommit=True) as c:
        c.execute("CREATE TABLE unrelated (x INTEGER)")
    with pytest.raises(ConfigError, match="holds no iot-anchor ledger"):
        Store.open(tmp_path / "d", store=other)
    with pytest.raises(ConfigError, match="already holds 1 table"):
        Store.create(tmp_path / "e", other)



def _terminate_others(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as c:
        return len(c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                             "datname = current_database() AND pid <> pg_backend_pid()"
                             ).fetchall())


def test_losing_the_lock_mid_commit_writes_nothing(tmp_path: Path, pg_url: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Gateway A's connection (and so its sequencer lock) is cut in the middle of its commit;
    gateway B commits meanwhile. A's commit fails and acknowledges nothing, nothing of A's
    batch is stored, and after reconnecting A's retry appends after B's entries: one chain."""
    a_store, vkey = Store.create(tmp_path / "d", pg_url)
    dev = Device("lk0")
    registry.add(a_store, dev.id, dev.public_bytes)
    b_store = Store.open(tmp_path / "d", store=pg_url)
    msgs = dev.readings(40)
    pa = Pipeline(a_store, batch_max=4096, workers=1, processes=False)
    pb = Pipeline(b_store, batch_max=4096, workers=1, processes=False)
    pa.submit(msgs[:20])
    pb.submit(msgs[20:])
    real: Callable[..., Any] = a_store.append_entry
    cut = {"done": False}

    def append_then_lose_the_lock(*args: Any) -> Any:
        out = real(*args)  # A wrote its entry inside its transaction ...
        if not cut["done"]:
            cut["done"] = True
            _terminate_others(pg_url)  # ... then its connection (and lock) is gone
            assert pb.commit() is not None  # B gets the lock and appends
        return out

    monkeypatch.setattr(a_store, "append_entry", append_then_lose_the_lock)
    b_store.close()  # B's connection was cut too: its commit above reconnected first
    b_store = Store.open(tmp_path / "d", store=pg_url)
    with pytest.raises(StorageError) as info:
        pa.commit()
    assert "connection" in info.value.what
    assert pa.pending() == 20
    assert a_store.reading_count() == 20 and a_store.entry_count() == 2  # only B's
    res = pa.commit()  # reconnects, re-reads the head inside the lock
    assert res is not None and res.readings == 20 and res.entries == [2]
    assert res.acks["lk0"].upto == 39
    pa.close()
    pb.close()
    result = audit(a_store, vkey, workers=1)
    assert result.ok, result.problems
    assert result.entries == 3 and result.readings == 40
    a_store.close()
    b_store.close()


def test_store_copy_both_ways_is_verified_and_identical(tmp_path: Path, pg_url: str,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """SQLite -> PostgreSQL -> a new SQLite file: every ledger table byte for byte, receipts
    equal, each arrival verified; a PostgreSQL copy keeps appending (identity columns follow
    the copied ids). A non-empty destination is refused."""
    from gateway.cli import main

    s, vkey = Store.create(tmp_path / "d")
    devs = [Device(f"cp{i}") for i in range(4)]
    _scenario(s, None, devs, _input(devs))
    d = str(tmp_path / "d")
    assert main(["store", "copy", "--from", f"sqlite:{d}", "--to", pg_url, "--data", d]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and "ledger OK" in out and "201 readings" in out
    back = tmp_path / "back.db"
    assert main(["store", "copy", "--from", pg_url, "--to", f"sqlite:{back}", "--data", d]) == 0
    pg = Store.open(tmp_path / "d", store=pg_url)
    again = Store.open(tmp_path / "d", store=f"sqlite:{back}")
    for other in (pg, again):
        for table, sql in LEDGER_TABLES.items():
            assert _rows(other, sql) == _rows(s, sql), (other.engine, table)
        assert other.query("SELECT kind, dev, seq, cose, detail, t FROM events ORDER BY id") == \
            s.query("SELECT kind, dev, seq, cose, detail, t FROM events ORDER BY id")
        assert other.meta("gateway_vkey") == vkey
    assert again.meta("created") == s.meta("created")
    capsys.readouterr()
    for dev, seq in (("cp0", 3), ("cp2", 10)):  # the receipt command, byte for byte
        outs = []
        for store in (None, pg_url, f"sqlite:{back}"):
            args = ["receipt", dev, str(seq), "--data", d] + (["--store", store] if store else [])
            assert main(args) == 0
            outs.append(capsys.readouterr().out)
        assert outs[0] == outs[1] == outs[2] and '"reading"' in outs[0]
    with Pipeline(pg, workers=1, processes=False) as p:  # the copy takes new readings and events
        p.submit(devs[2].readings(3) + [devs[2].message(0, b"\x02" * 32)])
        assert p.commit() is not None
    assert audit(pg, vkey, workers=1).ok
    for x in (s, pg, again):
        x.close()
    assert main(["store", "copy", "--from", f"sqlite:{d}", "--to", pg_url, "--data", d]) == 2
    assert "already holds an iot-anchor ledger" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_watermark_walks_pages_and_spread_gateways(tmp_path: Path, engine: str,
                                                   request: pytest.FixtureRequest) -> None:
    """The watermark walk (`contiguous_end`) on both engines: a late seq 0 joins a run of
    1,200 stored readings (three pages of 512), a gap stops it; readings spread over two
    pipelines (a shared group) move it over each other's."""
    url = request.getfixturevalue("pg_url") if engine == "postgresql" else None
    s, vkey = Store.create(tmp_path / "d", url)
    a, b = Device("wm0"), Device("wm1")
    registry.add(s, a.id, a.public_bytes)
    registry.add(s, b.id, b.public_bytes)
    ra, rb = a.readings(1300), b.readings(40)
    other = Store.open(tmp_path / "d", store=url)
    p = Pipeline(s, batch_max=4096, workers=1, processes=False)
    q = Pipeline(other, batch_max=4096, workers=1, processes=False)
    p.submit(ra[1:1200] + ra[1201:])
    assert p.commit().acks["wm0"].upto == -1
    p.submit(ra[:1])
    assert p.commit().acks["wm0"].upto == 1199  # walked 1..1199, stopped at the gap
    p.submit(rb[0::2])
    q.submit(rb[1::2])
    assert p.commit().acks["wm1"].upto == 0
    assert q.commit().acks["wm1"].upto == 39
    assert s.device("wm1").upto == 39 and s.device("wm0").upto == 1199
    p.close()
    q.close()
    other.close()
    assert audit(s, vkey, workers=1).ok
    s.close()


def test_migrations_run_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """A PostgreSQL ledger at schema version 1 (entries' kind limited by a CHECK) is taken to
    the current version by the same migrations when it is opened, as a SQLite one is."""
    conn = pg_engine.connect(pg_url, "test")
    conn.execute("BEGIN IMMEDIATE")
    pg_engine.prepare_empty(conn)
    for stmt in store_mod.MIGRATIONS[0].split(";"):
        if stmt.strip():
            conn.execute(stmt)
    conn.execute("PRAGMA user_version=1")
    conn.execute("INSERT INTO meta VALUES ('gateway_vkey', ?)", ("placeholder",))
    conn.execute("COMMIT")
    conn.close()
    (tmp_path / "d").mkdir()
    s = Store.open(tmp_path / "d", store=pg_url)
    assert s.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    with s.write() as c:  # a kind the version-1 CHECK refused
        c.execute("INSERT INTO entries (i, kind, body, hash) VALUES (0, 'dataset', ?, ?)",
                  (b"x", b"y"))
    assert s.query("SELECT kind FROM entries") == [("dataset",)]
    s.close()


def test_store_group_shows_sets_and_clears(tmp_path: Path, pg_url: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    s, _ = Store.create(tmp_path / "d", pg_url)
    s.claim_shared_group("g1")
    s.claim_shared_group("g1")  # the same group again: fine
    with pytest.raises(ConfigError, match="belongs to the shared group 'g1'") as info:
        s.claim_shared_group("g2")
    assert "store group --set g2" in info.value.hint
    s.close()
    d = ["--data", str(tmp_path / "d"), "--store", pg_url]
    assert main(["store", "group", *d]) == 0
    assert capsys.readouterr().out == "shared group: g1\n"
    assert main(["store", "group", "--set", "g2", *d]) == 0
    assert capsys.readouterr().out == "shared group: g2\n"
    assert main(["store", "group", "--set", "a/b", *d]) == 2
    assert "not a group name" in capsys.readouterr().err
    assert main(["store", "group", "--clear", *d]) == 0
    assert capsys.readouterr().out == "shared group: none recorded\n"


def test_sqlite_never_loads_psycopg_and_a_missing_one_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    out = subprocess.run([sys.executable, "-c", "import sys, gateway.cli, gateway.ingest.pipeline, "
                          "gateway.service.runner; print('psycopg' in sys.modules)"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
    monkeypatch.setattr(pg_engine, "psycopg", None)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now fails
    with pytest.raises(ConfigError, match="needs psycopg 3") as info:
        Store.create(tmp_path / "d", "postgresql://anchor@127.0.0.1:5432/anchor")
    assert "postgresql extra" in info.value.hint


def test_a_stopped_writer_loses_the_sequencer(tmp_path: Path, pg_url: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that stops inside a write transaction (SIGSTOP, a hung host) loses its
    session, and so the sequencer lock, after the idle timeout; another writer then appends,
    and the stopped one's transaction commits nothing."""
    monkeypatch.setattr(pg_engine, "WRITE_IDLE_TIMEOUT", "1s")
    a, vkey = Store.create(tmp_path / "d", pg_url)
    b = Store.open(tmp_path / "d", store=pg_url)
    with pytest.raises(StorageError):
        with a.write() as c:
            a.append_entry(c, a.head(c), "device", b"x")  # never committed
            time.sleep(1.5)  # idle inside the transaction, holding the lock
            t0 = time.monotonic()
            registry.add(b, "late0", Device("late0").public_bytes)  # gets the lock
            assert time.monotonic() - t0 < 5
    assert a.entry_count() == 1  # b's entry only (a reconnected)
    a.close()
    b.close()


def test_data_version_counts_other_connections_commits(tmp_path: Path, pg_url: str) -> None:
    """PRAGMA data_version as on SQLite: it moves when another connection commits a write,
    not for this connection's own commits, nor for rolled-back or read-only work."""
    a, _ = Store.create(tmp_path / "d", pg_url)
    b = Store.open(tmp_path / "d", store=pg_url)
    assert not a.changed_elsewhere() and not b.changed_elsewhere()
    registry.add(a, "dv0", Device("dv0").public_bytes)
    assert not a.changed_elsewhere()  # its own commit
    assert b.changed_elsewhere() and not b.changed_elsewhere()  # once
    with pytest.raises(RuntimeError), b.write():
        raise RuntimeError("rolled back")
    b.query("SELECT COUNT(*) FROM readings")
    assert not a.changed_elsewhere()
    b.set_shared_group("g")  # any write, not only the ledger's
    assert a.changed_elsewhere()
    assert a.registry_version() == b.registry_version() == 0
    a.close()
    b.close()
