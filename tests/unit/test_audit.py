"""Tamper tests: after a few thousand readings, any single change makes the audit fail and
name the item (table, id). One ledger is built per module; each test works on a copy."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.audit.store_audit import audit
from gateway.fleet import registry
from gateway.ingest.pipeline import Pipeline
from gateway.storage.store import DB_NAME, Store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers_readings import Device  # noqa: E402

N_DEVICES = 3
PER_DEVICE = 1000  # 3001 readings in batches of at most 256


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ledger") / "data"
    store, _ = Store.create(d)
    devs = [Device(f"dev-{i}") for i in range(N_DEVICES)]
    for dv in devs:
        registry.add(store, dv.id, dv.public_bytes)
    half = PER_DEVICE // 2

    def interleaved(ds: list[Device]) -> list[bytes]:
        per = [dv.readings(half) for dv in ds]
        return [per[k][i] for i in range(half) for k in range(len(ds))]

    with Pipeline(store, batch_max=256, workers=2) as p:
        p.submit(interleaved(devs))
        p.commit()
        # rotate dev-2's key mid-way: its later readings verify against the new key only
        new = Device("dev-2")
        registry.rotate(store, "dev-2", new.public_bytes)
        p.reload()
        new.seq, new.prev = devs[2].seq, devs[2].prev
        p.submit(interleaved([devs[0], devs[1], new]))
        # one recorded chain break (the last reading, id 3000)
        p.submit([devs[0].message(PER_DEVICE, b"\x07" * 32)])
        p.commit()
    res = audit(store, store.vkey())
    assert res.ok, res.problems
    assert res.readings == N_DEVICES * PER_DEVICE + 1
    store.close()
    return d


@pytest.fixture
def copy(ledger: Path, tmp_path: Path) -> Iterator[Store]:
    d = tmp_path / "copy"
    shutil.copytree(ledger, d)
    s = Store.open(d)
    try:
        yield s
    finally:
        s.close()


def first_problem(store: Store) -> str:
    res = audit(store, store.vkey(), max_problems=1)
    assert not res.ok, "the audit passed after tampering"
    return res.problems[0]


def flip(store: Store, table: str, column: str, where: str, offset: int) -> None:
    (value,) = store.one(f"SELECT {column} FROM {table} WHERE {where}")
    if isinstance(value, str):
        b = bytearray(value.encode())
        b[offset] ^= 0x01
        new: object = b.decode()
    else:
        b = bytearray(value)
        b[offset] ^= 0x01
        new = bytes(b)
    store.conn.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", (new,))


BYTE_FLIPS = [
    # (table, column, where, offset, expected start of the first problem)
    ("readings", "cose", "id = 100", 4, "readings 100:"),  # protected header
    ("readings", "cose", "id = 100", 30, "readings 100:"),  # payload
    ("readings", "cose", "id = 2999", -1, "readings 2999:"),  # signature, last byte
    ("readings", "cose", "id = 7", -40, "readings 7:"),  # signature, r
    ("readings", "dev", "id = 5", 0, "readings 5:"),
    ("entries", "body", "i = 4", 10, "entries 4:"),
    ("entries", "body", "i = 0", 40, "entries 0:"),  # a device entry (its key)
    ("entries", "hash", "i = 6", 0, "entries 6:"),
    ("batches", "root", "entry = 5", 31, "batches 5:"),
    ("batches", "nodes", "entry = 7", 100, "batches 7:"),
    ("checkpoints", "note", "size = 3", 20, "checkpoints 3:"),
    ("checkpoints", "note", "size = 10", -10, "checkpoints 10:"),
    ("checkpoints", "root", "size = 8", 0, "checkpoints 8:"),
    ("ledger_nodes", "hash", "level = 1 AND idx = 2", 3, "ledger_nodes (1, 2):"),
    ("devices", "key", "id = 'dev-1'", 10, "devices dev-1:"),
    ("device_keys", "key", "dev = 'dev-0'", 10, "device_keys (dev-0, 0):"),
    ("meta", "value", "key = 'ledger_range'", 12, "meta ledger_range:"),
]


@pytest.mark.parametrize("table,column,where,offset,expected", BYTE_FLIPS,
                         ids=[f"{t}.{c}[{w}]@{o}" for t, c, w, o, _ in BYTE_FLIPS])
def test_single_byte_change_is_named(copy: Store, table: str, column: str, where: str,
                                     offset: int, expected: str) -> None:
    flip(copy, table, column, where, offset)
    assert first_problem(copy).startswith(expected)


def _delete(sql: str) -> Callable[[Store], None]:
    return lambda s: s.conn.execute(sql)


DELETES = [
    ("DELETE FROM readings WHERE id = 1234", "readings 1234:"),
    ("DELETE FROM readings WHERE id = (SELECT MAX(id) FROM readings)", "readings 3000:"),
    ("DELETE FROM entries WHERE i = 5", "entries 5:"),
    ("DELETE FROM batches WHERE entry = 4", "batches 4:"),
    ("DELETE FROM checkpoints WHERE size = 6", "checkpoints 6:"),
    ("DELETE FROM checkpoints WHERE size = (SELECT MAX(size) FROM checkpoints)", "checkpoints "),
    ("DELETE FROM ledger_nodes WHERE level = 0 AND idx = 3", "ledger_nodes (0, 3):"),
    ("DELETE FROM devices WHERE id = 'dev-1'", "devices dev-1:"),
    ("DELETE FROM device_keys WHERE dev = 'dev-2' AND until_entry IS NULL", "device_keys "),
    ("DELETE FROM events WHERE kind = 'chain_break'", "readings 3000:"),
]


@pytest.mark.parametrize("sql,expected", DELETES, ids=[d[0][12:60] for d in DELETES])
def test_deleted_row_is_named(copy: Store, sql: str, expected: str) -> None:
    copy.conn.execute(sql)
    assert copy.conn.total_changes >= 1
    assert first_problem(copy).startswith(expected)


def _swap(table: str, key: str, a: int, b: int, cols: str) -> Callable[[Store], None]:
    """Swap the contents of two rows (the given columns)."""
    def run(s: Store) -> None:
        ra = s.one(f"SELECT {cols} FROM {table} WHERE {key} = ?", (a,))
        rb = s.one(f"SELECT {cols} FROM {table} WHERE {key} = ?", (b,))
        sets = ", ".join(f"{c} = ?" for c in cols.split(", "))
        s.conn.execute(f"UPDATE {table} SET {sets} WHERE {key} = ?", (*rb, a))
        s.conn.execute(f"UPDATE {table} SET {sets} WHERE {key} = ?", (*ra, b))
    return run


def _swap_keys(table: str, key: str, a: int, b: int) -> Callable[[Store], None]:
    """Swap the positions of two rows (their primary keys)."""
    def run(s: Store) -> None:
        s.conn.execute(f"UPDATE {table} SET {key} = -99 WHERE {key} = ?", (a,))
        s.conn.execute(f"UPDATE {table} SET {key} = ? WHERE {key} = ?", (a, b))
        s.conn.execute(f"UPDATE {table} SET {key} = ? WHERE {key} = -99", (b,))
    return run


SWAPS = [
    # two readings of one batch change places: each is fine, the batch root is not
    (_swap_keys("readings", "id", 10, 11), "entries 3: batch root"),
    (_swap_keys("readings", "id", 10, 2000), "readings 10:"),
    (_swap("readings", "id", 10, 13, "cose"), "readings 10:"),
    (_swap_keys("entries", "i", 4, 5), "entries 4:"),
    (_swap("batches", "entry", 4, 5, "first, n, root, nodes"), "batches 4:"),
    (_swap_keys("checkpoints", "size", 4, 5), "checkpoints 4:"),
    (_swap("devices", "rowid", 1, 2, "key"), "devices dev-0:"),
]


@pytest.mark.parametrize("swap,expected", SWAPS, ids=[f"swap-{i}" for i in range(len(SWAPS))])
def test_swapped_rows_are_named(copy: Store, swap: Callable[[Store], None],
                                expected: str) -> None:
    swap(copy)
    assert first_problem(copy).startswith(expected)


def test_untouched_copy_passes(copy: Store) -> None:
    res = audit(copy, copy.vkey())
    assert res.ok and res.readings == 3001 and res.checkpoints == res.entries
    assert res.devices == N_DEVICES


def test_another_gateway_key_fails(copy: Store, tmp_path: Path) -> None:
    other, vkey = Store.create(tmp_path / "other")
    other.close()
    res = audit(copy, vkey)
    assert not res.ok and res.problems[0].startswith("checkpoints 1: note does not verify")


def test_db_file_name() -> None:
    assert DB_NAME == "ledger.db"


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.text = ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("tty", [True, False])
def test_progress_bar_only_on_a_terminal(copy: Store, tty: bool) -> None:
    from gateway.audit.store_audit import Progress

    stream = _Stream(tty)
    res = audit(copy, copy.vkey(), progress=Progress(1, stream))  # type: ignore[arg-type]
    assert res.ok
    if tty:
        assert "verifying readings" in stream.text and "3001/3001 100%" in stream.text
    else:
        assert stream.text == ""


def test_extra_rows_are_named(copy: Store) -> None:
    copy.conn.execute("INSERT INTO ledger_nodes VALUES (7, 99, zeroblob(32))")
    assert first_problem(copy).startswith("ledger_nodes (7, 99): row is not a node")


def test_extra_reading_row_is_named(copy: Store) -> None:
    cose = copy.one("SELECT cose FROM readings WHERE id = 0")[0]
    copy.conn.execute("INSERT INTO readings VALUES (5000, 'dev-0', 999999, 3, ?)", (cose,))
    assert first_problem(copy).startswith("readings 5000:")
