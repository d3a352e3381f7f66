"""`StoreCore`: one open store (SQLite file or PostgreSQL database) and the ledger's own
tables: opening, creating and migrating it, transactions (`write()`), the entries, the
ledger tree and checkpoints, the device registry and the readings. The feature tables
(rules, tlog, console, mirrors, shared groups, provenance, downlink) are in their own
modules, each a subclass of this one; `gateway.storage.store.Store` joins them.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from gateway.errors import ConfigError, IntegrityError, StorageError
from gateway.ledger import merkle, note
from gateway.ledger.batch import GROUP, split_nodes
from gateway.ledger.entry import (
    RecordEntry,
    decode_entry,
    device_entry,
    entry_hash,
    entry_leaf_hash,
    record_entry,
)
from gateway.storage import keyfile, postgres
from gateway.storage.location import DB_NAME, StoreLocation, parse_store
from gateway.storage.schema import MIGRATIONS, SCHEMA_VERSION

KEY_NAME = "gateway.key"
VKEY_NAME = "gateway.vkey"
ZERO_HASH = bytes(32)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _read_only(directory: Path) -> bool:
    """True when `directory` is on a read-only file system or not writable by us."""
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return True
        return not os.access(directory, os.W_OK)
    except OSError:
        return False


def storage_error(e: BaseException, path: Path, doing: str) -> StorageError:
    """Turn an sqlite3/OS error into a StorageError that says what to do."""
    msg = str(e)
    low = msg.lower()
    if _read_only(path.parent) and ("open" in low or "readonly" in low or "read-only" in low
                                    or getattr(e, "errno", None) in (13, 30)):
        return StorageError(
            f"{doing} failed on {path}: the data directory {path.parent} is read-only ({msg})",
            f"make {path.parent} writable again (remount it read-write or fix its "
            "permissions) and retry; nothing was acknowledged")
    if "full" in low or getattr(e, "errno", None) == 28:
        hint = f"free space on the disk holding {path.parent} and retry; nothing was acknowledged"
    elif "readonly" in low or "read-only" in low or getattr(e, "errno", None) in (13, 30):
        hint = f"make {path.parent} and {path.name} writable by this user; nothing was acknowledged"
    elif "locked" in low or "busy" in low:
        hint = "another iot-anchor process holds the database; retry when it is done"
    elif "malformed" in low or "not a database" in low or "corrupt" in low:
        hint = (f"the database file {path} is damaged: restore it from a backup, "
                "then run 'iot-anchor ledger verify'")
    elif "unable to open" in low:
        hint = f"check that {path.parent} exists and is accessible, or run 'iot-anchor init'"
    else:
        hint = "check the data directory and the disk, then retry"
    return StorageError(f"{doing} failed on {path}: {msg}", hint)


@dataclass(frozen=True, slots=True)
class DeviceRow:
    id: str
    key: bytes
    status: str
    entry: int
    readings: int
    last_seq: int | None
    upto: int


@dataclass(frozen=True, slots=True)
class Head:
    """The ledger head read inside a write transaction."""

    size: int  # number of entries
    last_hash: bytes  # entry_hash of entry size-1, or 32 zero bytes
    tree: merkle.CompactRange


@dataclass(frozen=True, slots=True)
class Appended:
    index: int
    body: bytes
    hash: bytes


class StoreCore:
    """One open data directory. Thread-safe (one lock around the one connection)."""

    def __init__(self, data_dir: Path, conn: sqlite3.Connection | postgres.PgConnection,
                 readonly: bool, location: StoreLocation | None = None) -> None:
        self.data_dir = data_dir
        self.where = location or StoreLocation("sqlite", data_dir / DB_NAME)
        self.path = self.where.path or data_dir / DB_NAME  # SQLite: the file
        self.location = self.where.shown  # for messages: the file, or the URL (no password)
        self.engine = self.where.kind  # "sqlite" | "postgresql"
        # other processes append concurrently (PostgreSQL): commits reconcile their batch
        self.concurrent = self.engine == "postgresql"
        self.conn: Any = conn
        self.readonly = readonly
        self.lock = threading.RLock()
        self._data_version = self._pragma("data_version")
        self._writes = 0  # write transactions begun (one per `write`)
        # (write transaction, tree, size, root) of the last checkpoint signed: see checkpoint
        self._signed: tuple[int, merkle.CompactRange, int, bytes] | None = None

    # --- opening -------------------------------------------------------------------------------

    @classmethod
    def create(cls, data_dir: str | os.PathLike[str], store: str | None = None, *,
               key: Any = None) -> tuple[Self, str]:
        """`iot-anchor init`: make DIR, the database and the key. Returns (store, vkey).
        Refuses a DIR that already holds anything, and a store that is not empty. `store`:
        where the database goes (gateway/storage/location.py; None: the default). `key`: the
        gateway's Ed25519 private key (None: a new one)."""
        d = Path(data_dir)
        where = parse_store(store, d)
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            raise ConfigError(
                f"data directory {d} already exists and is not empty",
                "refusing to overwrite it; pick another --data DIR or remove it first",
            )
        if where.kind == "postgresql":
            cls.check_empty_pg(where)
        try:
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        except OSError as e:
            raise StorageError(f"cannot create data directory {d}: {e.strerror}",
                               "check the path and its permissions") from e
        key = key if key is not None else note.generate_key()
        keyfile.save_private_key(d / KEY_NAME, key)
        vkey = note.vkey_from_private(key)
        try:
            (d / VKEY_NAME).write_text(vkey + "\n")
        except OSError as e:
            raise storage_error(e, d / VKEY_NAME, "writing the vkey") from e
        new = cls._connect(d, create=True, where=where)
        with new.write() as c:
            c.execute("INSERT INTO meta VALUES ('gateway_vkey', ?)", (vkey,))
            c.execute("INSERT INTO meta VALUES ('created', ?)", (now_ms(),))
            c.execute("INSERT INTO meta VALUES ('ledger_range', ?)",
                      (merkle.CompactRange().to_bytes(),))
        return new, vkey

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str], *, readonly: bool = False,
             store: str | None = None) -> Self:
        """Open the store of DIR: `store` (a URL, gateway/storage/location.py), else the one
        named by --store / $IOT_ANCHOR_STORE, else DIR/ledger.db."""
        d = Path(data_dir)
        where = parse_store(store, d)
        if where.kind == "postgresql":
            return cls._connect_pg(d, where, create=False, readonly=readonly)
        assert where.path is not None
        if not where.path.is_file():
            if where.path != d / DB_NAME:
                raise ConfigError(f"no iot-anchor database at {where.path}",
                                  "check --store, or make it with 'iot-anchor init --store'")
            raise ConfigError(
                f"no iot-anchor database in {d}",
                "run 'iot-anchor init --data DIR' first, or pass the right --data / "
                "$IOT_ANCHOR_DATA",
            )
        return cls._connect(d, create=False, readonly=readonly, where=where)

    @classmethod
    def connect_new(cls, data_dir: Path, where: StoreLocation) -> Self:
        """A new store at `where` with the current schema and no rows (`store copy`; the
        caller checked that nothing is there)."""
        return cls._connect(data_dir, create=True, where=where)

    @classmethod
    def holds_ledger(cls, data_dir: str | os.PathLike[str]) -> bool:
        """Whether DIR's store (--store, else DIR/ledger.db) holds an iot-anchor ledger."""
        where = parse_store(None, data_dir)
        if where.kind == "sqlite":
            assert where.path is not None
            return where.path.is_file()
        assert where.url is not None
        conn = postgres.connect(where.url, where.shown, readonly=True)
        try:
            return postgres.SCHEMA_TABLE in postgres.holds_tables(conn)
        finally:
            conn.close()

    @classmethod
    def check_empty_pg(cls, where: StoreLocation) -> None:
        """`init` into PostgreSQL: the database must exist and hold no tables."""
        assert where.url is not None
        conn = postgres.connect(where.url, where.shown)
        try:
            tables = postgres.holds_tables(conn)
        finally:
            conn.close()
        if tables:
            what = ("an iot-anchor ledger" if postgres.SCHEMA_TABLE in tables
                    else f"{len(tables)} table(s) ({', '.join(tables[:3])})")
            raise ConfigError(
                f"the database {where.shown} already holds {what}",
                "refusing to mix a new ledger into it: give an empty database (createdb NAME), "
                "or, for another gateway of this ledger, copy its data directory "
                "(gateway.key) instead of running init")

    @classmethod
    def _connect_pg(cls, d: Path, where: StoreLocation, *, create: bool,
                    readonly: bool = False) -> Self:
        assert where.url is not None
        conn = postgres.connect(where.url, where.shown, readonly=readonly)
        try:
            if create:
                conn.execute("BEGIN IMMEDIATE")
                postgres.prepare_empty(conn)
                conn.execute("COMMIT")
            elif not postgres.has_schema(conn):
                raise ConfigError(
                    f"the database {where.shown} holds no iot-anchor ledger",
                    "check --store, or make one with 'iot-anchor init --store URL' on an "
                    "empty database")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            cls._check_version(where.shown, version, readonly)
            store = cls(d, conn, readonly, where)
            if version < SCHEMA_VERSION:
                store._migrate(version)
            return store
        except BaseException:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            conn.close()  # no connection may outlive a failed open
            raise

    @staticmethod
    def _check_version(shown: str, version: int, readonly: bool) -> None:
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"{shown} has schema version {version}, newer than this iot-anchor "
                f"({SCHEMA_VERSION})", "upgrade iot-anchor")
        if version < SCHEMA_VERSION and readonly:
            raise ConfigError(f"{shown} has an old schema ({version})",
                              "open it once read-write to migrate it")

    @classmethod
    def _connect(cls, d: Path, *, create: bool, readonly: bool = False,
                 where: StoreLocation | None = None) -> Self:
        where = where or StoreLocation("sqlite", d / DB_NAME)
        if where.kind == "postgresql":
            return cls._connect_pg(d, where, create=create, readonly=readonly)
        assert where.path is not None
        path = where.path
        conn: sqlite3.Connection | None = None
        try:
            if readonly:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                       check_same_thread=False, timeout=30)
            else:
                conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                       timeout=30)
            if not readonly:
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=OFF")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            cls._check_version(str(path), version, readonly)
            store = cls(d, conn, readonly, where)
            if version < SCHEMA_VERSION:
                store._migrate(version)
            return store
        except BaseException as e:
            if conn is not None:  # no file handle may outlive a failed open
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            if isinstance(e, sqlite3.Error):
                raise storage_error(e, path, "opening the database") from e
            raise

    def _migrate(self, version: int) -> None:
        with self.write() as c:
            # re-read inside the write lock: another process may have migrated meanwhile
            version = c.execute("PRAGMA user_version").fetchone()[0]
            for k in range(version, SCHEMA_VERSION):
                for stmt in MIGRATIONS[k].split(";"):
                    if stmt.strip():
                        c.execute(stmt)
            c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self.lock:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- low level -----------------------------------------------------------------------------

    def _forget_cache(self) -> None:
        """After a database error, drop the connection's page cache: a damaged page read
        before the file was repaired must not be served from memory afterwards."""
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("PRAGMA shrink_memory")

    def _pragma(self, name: str) -> int:
        try:
            return int(self.conn.execute(f"PRAGMA {name}").fetchone()[0])
        except sqlite3.Error as e:
            self._forget_cache()
            raise storage_error(e, self.path, f"PRAGMA {name}") from e

    def changed_elsewhere(self) -> bool:
        """True once after another connection (another process) committed something."""
        with self.lock:
            v = self._pragma("data_version")
            if v != self._data_version:
                self._data_version = v
                return True
            return False

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE). Any failure rolls back and raises
        StorageError (sqlite errors) or re-raises (our own errors)."""
        if self.readonly:
            raise StorageError(f"{self.location} is open read-only", "open it read-write")
        with self.lock:
            c = self.conn
            self._writes += 1
            try:
                c.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                self._forget_cache()
                raise storage_error(e, self.path, "starting a transaction") from e
            try:
                yield c
                c.execute("COMMIT")
            except BaseException as e:
                with contextlib.suppress(sqlite3.Error):
                    c.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    self._forget_cache()
                    raise storage_error(e, self.path, "writing the ledger") from e
                raise

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self.lock:
            try:
                return self.conn.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                self._forget_cache()
                raise storage_error(e, self.path, "reading the database") from e

    def one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        rows = self.query(sql, args)
        return rows[0] if rows else None

    # --- ledger head, entries, checkpoints (call inside write()) ------------------------------

    def meta(self, key: str) -> Any:
        row = self.one("SELECT value FROM meta WHERE key = ?", (key,))
        return row[0] if row else None

    def vkey(self) -> str:
        v = self.meta("gateway_vkey")
        if not v:
            raise StorageError(f"{self.path} has no gateway key record", "run 'iot-anchor init'")
        return str(v)

    def load_signer(self) -> Any:
        key = keyfile.load_private_key(self.data_dir / KEY_NAME)
        if note.vkey_from_private(key) != self.vkey():
            raise ConfigError(
                f"{self.data_dir / KEY_NAME} is not the key this ledger was created with",
                "restore the original gateway.key",
            )
        return key

    def head(self, c: sqlite3.Connection) -> Head:
        row = c.execute("SELECT i, hash FROM entries ORDER BY i DESC LIMIT 1").fetchone()
        size, last = (row[0] + 1, row[1]) if row else (0, ZERO_HASH)
        blob = c.execute("SELECT CAST(value AS BLOB) FROM meta WHERE key = 'ledger_range'"
                         ).fetchone()
        try:
            tree = merkle.CompactRange.from_bytes(blob[0]) if blob else merkle.CompactRange()
        except ValueError as e:
            raise IntegrityError(f"meta.ledger_range is damaged: {e}",
                                 "run 'iot-anchor ledger verify'") from None
        if tree.size != size:
            raise IntegrityError(
                f"the ledger tree has {tree.size} leaves but the entries table {size} rows",
                "the database was changed outside iot-anchor; run 'iot-anchor ledger verify'")
        return Head(size, last, tree)

    def append_entry(self, c: sqlite3.Connection, head: Head, kind: str, body: bytes) -> Appended:
        """Insert entry `head.size` (its bytes made by the caller with head.last_hash) and its
        ledger-tree nodes; advances `head.tree` in place."""
        i = head.size
        h = entry_hash(body)
        c.execute("INSERT INTO entries (i, kind, body, hash) VALUES (?, ?, ?, ?)",
                  (i, kind, body, h))
        nodes = head.tree.append(entry_leaf_hash(body))
        c.executemany("INSERT INTO ledger_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)
        return Appended(i, body, h)

    def checkpoint(self, c: sqlite3.Connection, tree: merkle.CompactRange, signer: Any) -> str:
        """Sign and store the checkpoint for `tree` (the state after this transaction's
        appends). Refuses to sign anything that does not extend the last checkpoint. The
        stored nodes are checked against the last checkpoint's root, except when this
        transaction signed it from this same tree (appended to since, in place): the first
        checkpoint of a transaction checks them, the next ones extend it by construction."""
        size, root = tree.size, tree.root()
        last = c.execute("SELECT size, root FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
        if last is not None:
            if size < last[0] or (size == last[0] and root != last[1]):
                raise IntegrityError(
                    f"refusing to sign checkpoint size {size}: the last signed one has size "
                    f"{last[0]} and another root", "run 'iot-anchor ledger verify'")
            if size == last[0]:
                return str(c.execute("SELECT note FROM checkpoints WHERE size = ?",
                                     (size,)).fetchone()[0])
            # the new tree must contain the old one: check the old root from stored nodes
            mine = self._signed
            if mine is not None and mine[0] == self._writes and mine[1] is tree \
                    and (mine[2], mine[3]) == (last[0], bytes(last[1])):
                old = mine[3]
            else:
                old = merkle.range_root_from_nodes(
                    lambda lv, ix: _node(c, lv, ix), 0, last[0]) if last[0] \
                    else merkle.EMPTY_ROOT
            if old != last[1]:
                raise IntegrityError(
                    f"the ledger tree's first {last[0]} entries no longer give the signed root",
                    "the database was changed outside iot-anchor; run 'iot-anchor ledger verify'")
        text = note.sign_checkpoint(size, root, signer)
        c.execute("INSERT INTO checkpoints (size, root, note) VALUES (?, ?, ?)", (size, root, text))
        c.execute("UPDATE meta SET value = ? WHERE key = 'ledger_range'", (tree.to_bytes(),))
        self._signed = (self._writes, tree, size, root)
        return text

    def latest_checkpoint(self) -> tuple[int, str] | None:
        row = self.one("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1")
        return (int(row[0]), str(row[1])) if row else None

    def checkpoint_note(self, size: int) -> str | None:
        """The signed checkpoint of `size` entries (without cosignatures), if stored."""
        row = self.one("SELECT note FROM checkpoints WHERE size = ?", (size,))
        return None if row is None else str(row[0])

    def entry_count(self) -> int:
        row = self.one("SELECT MAX(i) FROM entries")
        return 0 if row is None or row[0] is None else int(row[0]) + 1

    def ledger_node(self, level: int, idx: int) -> bytes:
        with self.lock:
            return _node(self.conn, level, idx)

    # --- device registry -----------------------------------------------------------------------

    def devices(self) -> list[DeviceRow]:
        return [DeviceRow(*r) for r in self.query(
            "SELECT id, key, status, entry, readings, last_seq, upto FROM devices ORDER BY id")]

    def device(self, dev: str) -> DeviceRow | None:
        r = self.one("SELECT id, key, status, entry, readings, last_seq, upto FROM devices "
                     "WHERE id = ?", (dev,))
        return DeviceRow(*r) if r else None

    def append_record(self, signer: Any, kind: str, fields: dict[str, Any]) -> tuple[int, str]:
        """Append one record entry (gateway.ledger.entry.RECORD_KINDS) and sign a checkpoint,
        in one transaction. Returns (entry index, checkpoint note). Raises EntryError for
        fields the kind refuses, before anything is written."""
        with self.write() as c:
            head = self.head(c)
            body = record_entry(head.size, head.last_hash, kind, fields, now_ms())
            e = self.append_entry(c, head, kind, body)
            cp = self.checkpoint(c, head.tree, signer)
        return e.index, cp

    def records(self, kind: str) -> list[RecordEntry]:
        """Every entry of a record kind, oldest first (decoded strictly)."""
        out = []
        for (body,) in self.query("SELECT body FROM entries WHERE kind = ? ORDER BY i", (kind,)):
            e = decode_entry(bytes(body))
            if not isinstance(e, RecordEntry):
                raise IntegrityError(f"entry {e.i} has kind column {kind!r} but is a {e.kind} "
                                     "entry", "run 'iot-anchor ledger verify'")
            out.append(e)
        return out

    def entry_body(self, i: int) -> bytes | None:
        row = self.one("SELECT body FROM entries WHERE i = ?", (i,))
        return bytes(row[0]) if row else None

    def entry_receipt_parts(self, i: int) -> dict[str, Any] | None:
        """What `receipt.build_entry_receipt` needs for entry i, or None if there is none."""
        with self.lock:
            try:
                c = self.conn
                body = c.execute("SELECT body FROM entries WHERE i = ?", (i,)).fetchone()
                if body is None:
                    return None
                cp = c.execute("SELECT size, note FROM checkpoints ORDER BY size DESC "
                               "LIMIT 1").fetchone()
                if cp is None or cp[0] <= i:
                    raise IntegrityError(f"entry {i} is not covered by a stored checkpoint",
                                         "run 'iot-anchor ledger verify'")
                size = int(cp[0])
                proof = merkle.inclusion_proof_with(
                    lambda lo, hi: merkle.range_root_from_nodes(
                        lambda lv, ix: _node(c, lv, ix), lo, hi), i, size)
            except sqlite3.Error as e:
                self._forget_cache()
                raise storage_error(e, self.path, "reading the database") from e
        return {"entry": bytes(body[0]), "entry_index": i, "tree_size": size,
                "entry_proof": proof, "checkpoint": str(cp[1])}

    def device_event(self, signer: Any, dev: str, key: bytes, action: str) -> tuple[int, str]:
        """Record a registry change (add / revoke / rotate) as a ledger entry, update the
        registry tables and sign a checkpoint, in one transaction. Returns (entry, checkpoint).
        The caller checks that the change makes sense (registry.py)."""
        with self.write() as c:
            head = self.head(c)
            body = device_entry(head.size, head.last_hash, dev, key, action, now_ms())
            e = self.append_entry(c, head, "device", body)
            if action == "add":
                c.execute("INSERT INTO devices (id, key, status, entry) VALUES (?, ?, 'active', ?)",
                          (dev, key, e.index))
                c.execute("INSERT INTO device_keys VALUES (?, ?, ?, NULL)", (dev, key, e.index))
            else:
                c.execute("UPDATE device_keys SET until_entry = ? "
                          "WHERE dev = ? AND until_entry IS NULL", (e.index, dev))
                if action == "rotate":
                    c.execute("INSERT INTO device_keys VALUES (?, ?, ?, NULL)",
                              (dev, key, e.index))
                    c.execute("UPDATE devices SET key = ?, entry = ? WHERE id = ?",
                              (key, e.index, dev))
                else:
                    c.execute("UPDATE devices SET status = 'revoked', entry = ? WHERE id = ?",
                              (e.index, dev))
            cp = self.checkpoint(c, head.tree, signer)
        return e.index, cp

    # --- readings ------------------------------------------------------------------------------

    def reading_count(self) -> int:
        row = self.one("SELECT MAX(id) FROM readings")
        return 0 if row is None or row[0] is None else int(row[0]) + 1

    def stored_cose(self, dev: str, seq: int) -> bytes | None:
        row = self.one("SELECT cose FROM readings WHERE dev = ? AND seq = ?", (dev, seq))
        return bytes(row[0]) if row else None

    def stored_many(self, keys: Iterable[tuple[str, int]], c: Any = None
                    ) -> dict[tuple[str, int], bytes]:
        """The stored COSE bytes of those (dev, seq) that are stored, in a few statements
        (`c`: the connection of the caller's transaction; None: outside one)."""
        keys = list(keys)
        out: dict[tuple[str, int], bytes] = {}
        if self.engine == "postgresql" and keys:
            # two array parameters, not a VALUES list: psycopg parses a long query's
            # placeholders anew on every call (4 µs per parameter, measured), and this runs
            # for every reading of a shared gateway's batch
            # LATERAL: one index lookup per key, whatever the planner thinks of the table
            # (a plain join became a hash join over the whole readings table)
            sql = ("SELECT k.dev, k.seq, r.cose FROM unnest(CAST(? AS TEXT[]), "
                   "CAST(? AS BIGINT[])) AS k (dev, seq) CROSS JOIN LATERAL (SELECT cose FROM "
                   "readings WHERE readings.dev = k.dev AND readings.seq = k.seq) AS r")
            arrays = ([k[0] for k in keys], [k[1] for k in keys])
            found = c.execute(sql, arrays) if c is not None else self.query(sql, arrays)
            return {(dev, int(seq)): bytes(cose) for dev, seq, cose in found}
        step = 400  # pairs per statement: 800 parameters (old SQLite allows 999)
        for k in range(0, len(keys), step):
            part = keys[k:k + step]
            args = [x for key in part for x in key]
            # a join, not `(dev, seq) IN (VALUES ...)`: SQLite scans the whole table for that
            sql = ("WITH k (dev, seq) AS (VALUES " + ", ".join(["(?, ?)"] * len(part))
                   + ") SELECT k.dev, k.seq, r.cose FROM k JOIN readings AS r "
                   "ON r.dev = k.dev AND r.seq = k.seq")
            rows = c.execute(sql, args) if c is not None else self.query(sql, args)
            for dev, seq, cose in rows:
                out[(dev, int(seq))] = bytes(cose)
        return out

    def contiguous_end(self, c: Any, ranges: dict[str, tuple[int, int]]) -> dict[str, int]:
        """Per device with range (lo, hi]: the largest s <= hi such that every seq lo+1..s is
        stored (lo when lo+1 is not), in a few statements inside the caller's transaction `c`
        (the pipeline's watermark walk). Each range is read through the (dev, seq) index; on
        PostgreSQL the server finds the end (a row number per seq: the run is where
        seq - lo equals it), so only one row per device comes back."""
        devs = list(ranges)
        out = {dev: ranges[dev][0] for dev in devs}
        if self.engine == "postgresql":
            for dev, last in c.execute(
                    "SELECT k.dev, r.e FROM unnest(CAST(? AS TEXT[]), CAST(? AS BIGINT[]), "
                    "CAST(? AS BIGINT[])) AS k (dev, lo, hi) CROSS JOIN LATERAL (SELECT "
                    "MAX(t.seq) AS e FROM (SELECT seq, ROW_NUMBER() OVER (ORDER BY seq) AS n "
                    "FROM readings WHERE readings.dev = k.dev AND readings.seq > k.lo AND "
                    "readings.seq <= k.hi) AS t WHERE t.seq - k.lo = t.n) AS r",
                    (devs, [ranges[d][0] for d in devs], [ranges[d][1] for d in devs])):
                if last is not None:
                    out[dev] = int(last)
            return out
        for k in range(0, len(devs), 300):  # 3 parameters each (old SQLite allows 999)
            part = devs[k:k + 300]
            args: list[Any] = []
            for dev in part:
                args += (dev, *ranges[dev])
            for dev, seq in c.execute(
                    "SELECT r.dev, r.seq FROM readings AS r JOIN (VALUES "
                    + ", ".join(["(?, ?, ?)"] * len(part)) + ") AS w ON r.dev = w.column1 "
                    "AND r.seq > w.column2 AND r.seq <= w.column3 ORDER BY r.dev, r.seq", args):
                if seq == out[dev] + 1:
                    out[dev] = int(seq)
        return out

    def rejected_counts(self) -> dict[str, int]:
        return {r: int(n) for r, n in self.query("SELECT reason, n FROM rejected ORDER BY reason")}

    def gaps(self) -> dict[str, list[list[int]]]:
        """Missing seq ranges below each device's last seq: {dev: [[lo, hi], ...]}."""
        out: dict[str, list[list[int]]] = {}
        for dev, lo in self.query(
                "SELECT dev, MIN(seq) FROM readings GROUP BY dev HAVING MIN(seq) > 0"):
            out.setdefault(dev, []).append([0, int(lo) - 1])
        for dev, seq, nxt in self.query(
                "SELECT dev, seq, nxt FROM (SELECT dev, seq, LEAD(seq) OVER "
                "(PARTITION BY dev ORDER BY seq) AS nxt FROM readings) AS t WHERE nxt > seq + 1 "
                "ORDER BY dev, seq"):
            out.setdefault(dev, []).append([int(seq) + 1, int(nxt) - 1])
        return out

    def receipt_parts(self, dev: str, seq: int) -> dict[str, Any] | None:
        """What `receipt.build_receipt` needs for (dev, seq), or None if it is not anchored."""
        with self.lock:
            try:
                return self._receipt_parts(dev, seq)
            except sqlite3.Error as e:
                self._forget_cache()
                raise storage_error(e, self.path, "reading the database") from e

    def _receipt_parts(self, dev: str, seq: int) -> dict[str, Any] | None:
        c = self.conn
        row = c.execute("SELECT id, batch, cose FROM readings WHERE dev = ? AND seq = ?",
                        (dev, seq)).fetchone()
        if row is None:
            return None
        rid, b, cose = row
        brow = c.execute("SELECT first, n, root, nodes FROM batches WHERE entry = ?",
                         (b,)).fetchone()
        if brow is None:
            raise IntegrityError(f"readings.id {rid} names batch {b}, which does not exist",
                                 "run 'iot-anchor ledger verify'")
        first, n, _root, nodes_blob = brow
        idx = rid - first
        g = idx // GROUP
        lo = first + g * GROUP
        hi = min(first + n, lo + GROUP)
        leaves = [merkle.leaf_hash(x[0]) for x in c.execute(
            "SELECT cose FROM readings WHERE id >= ? AND id < ? ORDER BY id", (lo, hi))]
        if len(leaves) != hi - lo:
            raise IntegrityError(f"batch {b} is missing readings between ids {lo} and {hi}",
                                 "run 'iot-anchor ledger verify'")
        nodes = split_nodes(nodes_blob)
        proof = merkle.inclusion_proof(leaves, idx - g * GROUP) + merkle.inclusion_proof(nodes, g)
        cp = c.execute("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
        body = c.execute("SELECT body FROM entries WHERE i = ?", (b,)).fetchone()
        if cp is None or body is None or cp[0] <= b:
            raise IntegrityError(f"batch entry {b} is not covered by a stored checkpoint",
                                 "run 'iot-anchor ledger verify'")
        size = int(cp[0])
        eproof = merkle.inclusion_proof_with(
            lambda lo_, hi_: merkle.range_root_from_nodes(lambda lv, ix: _node(c, lv, ix),
                                                          lo_, hi_), b, size)
        return {
            "cose": bytes(cose), "reading_index": idx, "batch_size": n, "reading_proof": proof,
            "entry": bytes(body[0]), "entry_index": b, "tree_size": size, "entry_proof": eproof,
            "checkpoint": str(cp[1]),
        }

    # --- the ledger tree: proofs from the stored nodes ------------------------------------

    def _range_root(self, lo: int, hi: int) -> bytes:
        return merkle.range_root_from_nodes(lambda lv, ix: _node(self.conn, lv, ix), lo, hi)

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        """RFC 6962 consistency proof from the ledger tree of `old` entries to that of `new`
        (empty when old is 0 or old == new), from the stored nodes."""
        if old == 0 or old == new:
            return []
        with self.lock:
            try:
                return merkle.consistency_proof_with(self._range_root, old, new)
            except sqlite3.Error as e:
                self._forget_cache()
                raise storage_error(e, self.path, "reading the database") from e

    def entry_proof(self, i: int, size: int) -> list[bytes]:
        """The inclusion proof of entry i in the ledger tree of `size` entries."""
        with self.lock:
            c = self.conn
            try:
                return merkle.inclusion_proof_with(
                    lambda lo, hi: merkle.range_root_from_nodes(
                        lambda lv, ix: _node(c, lv, ix), lo, hi), i, size)
            except sqlite3.Error as e:
                raise storage_error(e, self.path, "reading the database") from e


def _node(c: sqlite3.Connection, level: int, idx: int) -> bytes:
    row = c.execute("SELECT hash FROM ledger_nodes WHERE level = ? AND idx = ?",
                    (level, idx)).fetchone()
    if row is None:
        raise IntegrityError(f"ledger_nodes has no node (level {level}, index {idx})",
                             "run 'iot-anchor ledger verify'")
    return bytes(row[0])
