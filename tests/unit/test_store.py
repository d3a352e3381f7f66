"""The SQLite store: schema versioning, data directory, batch nodes, receipts, refusals."""

from __future__ import annotations

import sqlite3
import stat
import sys
from pathlib import Path

import pytest

from gateway.errors import ConfigError, IntegrityError, StorageError
from gateway.fleet import registry
from gateway.ingest.pipeline import Pipeline
from gateway.ledger import merkle
from gateway.ledger.batch import GROUP, batch_nodes
from gateway.ledger.receipt import build_receipt, verify_receipt
from gateway.storage.store import DB_NAME, SCHEMA_VERSION, Store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers_readings import Device  # noqa: E402


def test_create_layout_and_schema(tmp_path: Path) -> None:
    store, vkey = Store.create(tmp_path / "d")
    assert (tmp_path / "d" / "gateway.vkey").read_text().strip() == vkey == store.vkey()
    assert stat.S_IMODE((tmp_path / "d" / "gateway.key").stat().st_mode) == 0o600
    c = store.conn
    assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"entries", "readings", "batches", "devices", "device_keys", "checkpoints", "events",
            "rejected", "ledger_nodes", "meta"} <= tables
    store.close()
    with pytest.raises(ConfigError, match="not empty"):
        Store.create(tmp_path / "d")


def test_open_refuses_missing_newer_and_damaged(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no iot-anchor database") as info:
        Store.open(tmp_path / "nothing")
    assert "iot-anchor init" in info.value.hint
    store, _ = Store.create(tmp_path / "d")
    store.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    store.close()
    with pytest.raises(ConfigError, match="newer"):
        Store.open(tmp_path / "d")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / DB_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError) as info:
        Store.open(bad)
    assert "backup" in info.value.hint or "damaged" in info.value.hint


def test_migration_from_an_empty_database(tmp_path: Path) -> None:
    d = tmp_path / "old"
    d.mkdir()
    sqlite3.connect(d / DB_NAME).close()  # user_version 0: every migration runs
    s = Store.open(d)
    assert s.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    s.close()


@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 31, 33, 100, 257])
def test_batch_nodes_give_the_rfc6962_root(n: int) -> None:
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    nodes = batch_nodes(leaves)
    assert len(nodes) == -(-n // GROUP)
    assert merkle.root(nodes) == merkle.root(leaves)


@pytest.mark.parametrize("batch", [1, 5, 16, 17, 40])
def test_receipts_verify_for_every_reading(tmp_path: Path, batch: int) -> None:
    store, vkey = Store.create(tmp_path / "d")
    dev = Device("r")
    registry.add(store, "r", dev.public_bytes)
    msgs = dev.readings(45)
    with Pipeline(store, batch_max=batch, workers=1) as p:
        p.submit(msgs[:20])
        p.commit()
        registry.add(store, "other", Device("other").public_bytes)  # an entry in between
        p.submit(msgs[20:])
        p.commit()
    for seq in range(45):
        parts = store.receipt_parts("r", seq)
        assert parts is not None
        got = verify_receipt(build_receipt(**parts), vkey, dev.public_bytes)
        assert got.seq == seq and got.tree_size == store.entry_count()
    assert store.receipt_parts("r", 45) is None
    store.close()


def test_checkpoint_refuses_a_rewritten_history(tmp_path: Path) -> None:
    store, _ = Store.create(tmp_path / "d")
    for i in range(3):
        registry.add(store, f"x{i}", Device(f"x{i}").public_bytes)
    # rewrite a stored ledger-tree node: the next checkpoint would not extend the signed one
    store.conn.execute("UPDATE ledger_nodes SET hash = zeroblob(32) WHERE level = 1 AND idx = 0")
    with pytest.raises(IntegrityError, match="no longer give the signed root"):
        registry.add(store, "y", Device("y").public_bytes)
    assert store.entry_count() == 3  # the failed transaction left nothing behind
    store.close()


def test_device_registry_rules(tmp_path: Path) -> None:
    store, _ = Store.create(tmp_path / "d")
    a = Device("a")
    registry.add(store, "a", a.public_bytes)
    with pytest.raises(ConfigError, match="already registered"):
        registry.add(store, "a", a.public_bytes)
    with pytest.raises(ConfigError, match="already has this key"):
        registry.rotate(store, "a", a.public_bytes)
    with pytest.raises(ConfigError, match="no device"):
        registry.revoke(store, "b")
    registry.revoke(store, "a")
    with pytest.raises(ConfigError, match="already revoked"):
        registry.revoke(store, "a")
    with pytest.raises(ConfigError, match="revoked"):
        registry.add(store, "a", Device("a").public_bytes)
    with pytest.raises(ConfigError):
        registry.parse_public_key("04" + "11" * 64)  # not on the curve
    compressed = Device("c")
    point = compressed.key.public_key().public_numbers()
    hex33 = ("02" if point.y % 2 == 0 else "03") + point.x.to_bytes(32, "big").hex()
    assert registry.parse_public_key(hex33) == compressed.public_bytes
    store.close()


def test_read_only_data_directory_is_named(tmp_path: Path) -> None:
    import contextlib
    import os
    import subprocess

    data = tmp_path / "data"
    Store.create(data)[0].close()
    view = tmp_path / "view"
    mounted = False
    if os.geteuid() == 0:  # root ignores permissions: use a read-only bind mount
        view.mkdir()
        ok = subprocess.run(["mount", "--bind", str(data), str(view)], capture_output=True)
        mounted = ok.returncode == 0 and subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(view)], capture_output=True).returncode == 0
        if not mounted:
            subprocess.run(["umount", str(view)], capture_output=True)
            pytest.skip("no read-only bind mount here, and root ignores permissions")
    else:
        view = data
        for p in [data, *data.iterdir()]:
            p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        with pytest.raises(StorageError) as info:
            s = Store.open(view)
            with contextlib.closing(s):
                registry.add(s, "x", Device("x").public_bytes)
        assert "read-only" in info.value.what and "init" not in info.value.explain()
        assert "writable" in info.value.hint
    finally:
        if mounted:
            # the failed open left no file handle behind, so the mount is not busy
            r = subprocess.run(["umount", str(view)], capture_output=True)
            if r.returncode:
                subprocess.run(["umount", "-l", str(view)], capture_output=True)
            assert r.returncode == 0, r.stderr
        else:
            for p in [data, *data.iterdir()]:
                p.chmod(0o755 if p.is_dir() else 0o644)


def test_a_repaired_page_is_read_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store, _ = Store.create(data)
    dev = Device("p")
    registry.add(store, "p", dev.public_bytes)
    with Pipeline(store, workers=1) as p:
        p.submit(dev.readings(50))
        p.commit()
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (root,) = store.one("SELECT rootpage FROM sqlite_master WHERE name = 'readings'")
    (size,) = store.one("PRAGMA page_size")
    assert store.stored_cose("p", 3) is not None  # the page is now in this connection's cache
    with open(data / DB_NAME, "r+b") as f:
        f.seek((root - 1) * size)
        original = f.read(size)
        f.seek((root - 1) * size)
        f.write(b"\xff" * size)
    # another connection sees the damage
    other = Store.open(data)
    with pytest.raises(StorageError) as info:
        other.stored_cose("p", 3)
    assert "damaged" in info.value.hint or "backup" in info.value.hint
    with open(data / DB_NAME, "r+b") as f:
        f.seek((root - 1) * size)
        f.write(original)
    # after the error the page cache was dropped: the repaired page is read from the file
    assert other.stored_cose("p", 3) is not None
    other.close()
    store.close()


def test_stored_many_finds_by_the_index(tmp_path: Path) -> None:
    """`stored_many` returns the stored COSE bytes of the keys that are stored (over several
    statements), and reads them through the (dev, seq) index: its SQLite statements take a
    number of steps that grows with the keys asked for, not with the table."""
    store, _ = Store.create(tmp_path / "d")
    devs = [Device(f"m{i}") for i in range(3)]
    for d in devs:
        registry.add(store, d.id, d.public_bytes)
    with Pipeline(store, batch_max=4096, workers=1, processes=False) as pipe:
        pipe.submit([m for d in devs for m in d.readings(300)])
        pipe.commit()
    keys = [(f"m{i}", s) for i in range(4) for s in range(0, 320, 2)]  # m3, seqs >= 300: absent
    got = store.stored_many(keys)
    assert len(keys) > 400 and set(got) == {(d, s) for d, s in keys if d != "m3" and s < 300}
    assert all(got[k] == store.stored_cose(*k) for k in got)

    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    store.conn.set_progress_handler(count, 10)
    store.stored_many([("m0", 5), ("m1", 7)])
    store.conn.set_progress_handler(None, 10)
    assert steps[0] < 90, steps[0]  # a scan of the 900 rows takes more than 900 / 10
    store.close()
