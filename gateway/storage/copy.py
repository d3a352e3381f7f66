"""`iot-anchor store copy`: every table of one store into a new, empty one (SQLite or
PostgreSQL, either way), from one consistent snapshot of the source, in one transaction.

The destination gets the same schema by the same migrations first, so the tables and columns
match; then each table's rows are copied as they are, in pages (the source is read through a
server-side cursor on PostgreSQL, so a large ledger is not held in memory). The caller
verifies the arrival (`gateway/cli/store.py`: row counts, the latest checkpoint, and the full
audit against the gateway key).

`meta.value` is the one column whose type varies by row (text, integers and bytes on SQLite;
text on PostgreSQL, see gateway/storage/postgres.py): the keys in BYTES_META hold bytes, those
in INT_META integers, the rest text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.storage import postgres
from gateway.storage.location import StoreLocation
from gateway.storage.store import Store

PAGE = 5000  # rows per executemany
BYTES_META = {"ledger_range"}
INT_META = {"created"}


def tables(store: Store) -> list[str]:
    """The store's tables (the schema's, not the engine's own)."""
    if store.engine == "postgresql":
        return [t for t in postgres.holds_tables(store.conn) if t != postgres.SCHEMA_TABLE]
    return [r[0] for r in store.conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name")]


def _rows(store: Store, table: str) -> tuple[list[str], Iterator[list[tuple[Any, ...]]]]:
    """The columns of `table` and its rows in pages, inside the caller's read transaction."""
    sql = f"SELECT * FROM {table}"
    if table == "meta":
        sql = "SELECT key, value, CAST(value AS BLOB) FROM meta"
    if store.engine == "postgresql":
        cur = store.conn.stream(sql)
    else:
        cur = store.conn.execute(sql)
    cols = [d[0] for d in cur.description]
    if table == "meta":
        cols = ["key", "value"]

    def pages() -> Iterator[list[tuple[Any, ...]]]:
        while rows := cur.fetchmany(PAGE):
            if table == "meta":
                rows = [_meta_row(store, r) for r in rows]
            yield rows

    return cols, pages()


def _meta_row(store: Store, r: tuple[Any, ...]) -> tuple[Any, ...]:
    key, value, raw = r
    if store.engine != "postgresql":
        return key, value
    if key in BYTES_META:
        return key, bytes(raw)
    if key in INT_META and str(value).lstrip("-").isdigit():
        return key, int(value)
    return key, value


def create_empty(data_dir: Path, where: StoreLocation) -> Store:
    """A new store at `where` with the current schema and no rows. Refuses one that exists
    (a SQLite file) or holds tables (a PostgreSQL database)."""
    if where.kind == "sqlite":
        assert where.path is not None
        if where.path.exists():
            raise ConfigError(f"{where.path} already exists",
                              "store copy writes a new store only: give a new file")
        if not where.path.parent.is_dir():
            raise ConfigError(f"the folder {where.path.parent} does not exist", "create it first")
    else:
        Store.check_empty_pg(where)
    return Store.connect_new(data_dir, where)


def copy_rows(src: Store, dst: Store) -> dict[str, int]:
    """Copy every table of `src` (one snapshot) into the empty `dst` (one transaction).
    Returns the rows copied per table."""
    counts: dict[str, int] = {}
    names = tables(src)
    missing = sorted(set(names) - set(tables(dst)))
    if missing:
        raise ConfigError(f"the destination's schema has no table {missing[0]}",
                          "copy with the iot-anchor version that wrote the source")
    with src.lock, dst.write() as out:
        src.conn.execute("BEGIN")  # one snapshot of the source
        try:
            for table in names:
                cols, pages = _rows(src, table)
                insert = (f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                          f"({', '.join('?' * len(cols))})")
                n = 0
                for rows in pages:
                    out.executemany(insert, rows)
                    n += len(rows)
                counts[table] = n
                if dst.engine == "postgresql":
                    postgres.reset_identities(dst.conn, table)
        finally:
            with contextlib.suppress(Exception):
                src.conn.execute("ROLLBACK")
    return counts
