"""The gateway's data directory and its database: schema, migrations, queries.

Data directory (``--data DIR``)::

    DIR/ledger.db       SQLite database (WAL, synchronous=FULL), unless --store names another
                        store (gateway/storage/location.py): a PostgreSQL database holds the
                        same tables then (gateway/storage/postgres.py)
    DIR/gateway.key     the gateway's Ed25519 signing key, PKCS#8 PEM, mode 0600
    DIR/gateway.vkey    its public key in C2SP vkey form (a copy for convenience; the audit
                        and receipts take the vkey from the operator, not from here)

Schema (version `SCHEMA_VERSION`, in ``PRAGMA user_version``; `MIGRATIONS[k]` takes a database
from version k to k+1, and opening a database runs the missing ones in one transaction):

``entries(i, kind, body, hash)``
    the ledger: entry i's deterministic CBOR bytes (gateway.ledger.entry) and SHA-256(body).
``ledger_nodes(level, idx, hash)``
    every completed perfect subtree of the ledger tree (level 0 = the entry leaf hashes), as
    reported by `merkle.CompactRange.append`: inclusion proofs need O(log n) lookups.
``batches(entry, first, n, root, nodes)``
    a batch of readings: its ledger entry index, the id of its first reading (the batch's
    readings are ids first .. first+n-1, in leaf order), its RFC 6962 root, and ``nodes``: the
    roots of its consecutive 16-leaf groups (the last one partial), concatenated; a receipt
    needs at most 16 readings plus these to build an inclusion proof.
``readings(id, dev, seq, batch, cose)``
    each anchored reading once: the COSE bytes as received; unique (dev, seq). The leaf hash
    SHA-256(0x00 || cose) is recomputed when needed, not stored.
``devices(id, key, status, entry, readings, last_seq, upto)``
    the registry's current state: key (65-byte SEC1 point), "active" | "revoked", the entry
    of the last change, count of anchored readings, highest seq, and ``upto``: the
    contiguous-anchored watermark (every seq <= upto is anchored; -1 when seq 0 is not), so an
    ack's ``upto`` is O(1).
``device_days(dev, day, readings, rejected, last_t)``
    per registered device and UTC day (commit time ms // 86,400,000): readings anchored,
    messages refused (counted by the device its topic names) and the time (ms) of its last
    commit with readings that day, updated by each commit.
``device_keys(dev, key, from_entry, until_entry)``
    key history: a reading in batch entry b was checked against the key with
    from_entry < b < until_entry (until_entry NULL = still valid).
``checkpoints(size, root, note)``
    every signed checkpoint, one per ledger size.
``events(id, kind, dev, seq, cose, detail, t)``
    security events: "equivocation" (a second, different message for a stored (dev, seq); the
    first one is kept, this one is stored here), "chain_break" (a stored reading whose prev is
    not the hash of the stored reading seq-1; the reading is still anchored, it is authentic).
``rejected(reason, n)``
    rejection counters by reason, updated in the batch's transaction.
``cosignatures(size, witness, line)``
    a witness's cosignature line (C2SP tlog-cosignature) on the checkpoint of that size, by
    witness vkey; served with the checkpoint and put into receipts.
``witness_status(witness, url, size, state, detail, t)``
    each configured witness as `run` last saw it: the size it cosigned, "ok" or the error.
``rule_state(set_entry, rule, dev, state)``
    the rule engine's state per (rule index, device) under the rules entry ``set_entry``
    (gateway.rules.engine; CBOR), written in the batch's transaction, so a restart goes on
    exactly where the last commit left off.
``actions(entry, rule, status, outcome)``
    every action entry, its status ("pending", "sent", "failed", "done") and the index of the
    outcome entry that set it; the executor resumes the pending ones.
``downlink_counters(dev, epoch, n)``
    the downlink counter last given to a device by a gateway of a shared group (`run
    --shared`): every gateway of the group takes the device's next counter from here, so the
    device sees one growing sequence whichever gateway sends (gateway/downlink).
``meta(key, value)``
    ``gateway_vkey``, ``ledger_range`` (the ledger tree's compact range, merkle.CompactRange
    bytes), ``created``.

All writes go through `Store.write()` (BEGIN IMMEDIATE ... COMMIT): a commit is one
transaction. SQLite failures become `StorageError` with what happened and what to do.

One class, one copy of each query, on both engines: write portable SQL (standard SQL, ``?``
placeholders, ``CAST(x AS BLOB)`` to read bytes from ``meta.value``, an alias on every subquery
in FROM; ``INSERT OR REPLACE`` replaces on the primary key only there, so where another UNIQUE
constraint matters write ``INSERT ... ON CONFLICT``). On PostgreSQL,
`self.conn` is a `postgres.PgConnection`, which translates it (its docstring lists how) and
raises `StorageError` itself; `self.concurrent` is True there: other processes may append at
any moment, and a commit reconciles its batch with what they stored (gateway/ingest/pipeline.py).
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
from typing import Any

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

KEY_NAME = "gateway.key"
VKEY_NAME = "gateway.vkey"
ZERO_HASH = bytes(32)

MIGRATIONS: list[str] = [
    # 0 -> 1: the initial schema
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE TABLE entries (
        i INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('batch', 'device')),
        body BLOB NOT NULL,
        hash BLOB NOT NULL
    );
    CREATE TABLE ledger_nodes (
        level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
        PRIMARY KEY (level, idx)
    ) WITHOUT ROWID;
    CREATE TABLE batches (
        entry INTEGER PRIMARY KEY,
        first INTEGER NOT NULL,
        n INTEGER NOT NULL,
        root BLOB NOT NULL,
        nodes BLOB NOT NULL
    );
    CREATE TABLE readings (
        id INTEGER PRIMARY KEY,
        dev TEXT NOT NULL,
        seq INTEGER NOT NULL,
        batch INTEGER NOT NULL,
        cose BLOB NOT NULL
    );
    CREATE UNIQUE INDEX readings_dev_seq ON readings (dev, seq);
    CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        key BLOB NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
        entry INTEGER NOT NULL,
        readings INTEGER NOT NULL DEFAULT 0,
        last_seq INTEGER,
        upto INTEGER NOT NULL DEFAULT -1
    );
    CREATE TABLE device_keys (
        dev TEXT NOT NULL,
        key BLOB NOT NULL,
        from_entry INTEGER NOT NULL,
        until_entry INTEGER,
        PRIMARY KEY (dev, from_entry)
    );
    CREATE TABLE checkpoints (
        size INTEGER PRIMARY KEY,
        root BLOB NOT NULL,
        note TEXT NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        dev TEXT NOT NULL,
        seq INTEGER NOT NULL,
        cose BLOB,
        detail TEXT NOT NULL,
        t INTEGER NOT NULL
    );
    CREATE INDEX events_dev_seq ON events (dev, seq);
    CREATE TABLE rejected (reason TEXT PRIMARY KEY, n INTEGER NOT NULL);
    """,
    # 1 -> 2: entries of any kind the ledger knows (gateway.ledger.entry checks the kind; the
    # audit compares the column with the body), found by kind
    """
    CREATE TABLE entries_v2 (
        i INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        body BLOB NOT NULL,
        hash BLOB NOT NULL
    );
    INSERT INTO entries_v2 (i, kind, body, hash) SELECT i, kind, body, hash FROM entries;
    DROP TABLE entries;
    ALTER TABLE entries_v2 RENAME TO entries;
    CREATE INDEX entries_kind ON entries (kind, i);
    """,
    # 2 -> 3: witness cosignatures on checkpoints and each witness's state as the gateway
    # last saw it (docs/tlog.md)
    """
    CREATE TABLE IF NOT EXISTS cosignatures (
        size INTEGER NOT NULL,
        witness TEXT NOT NULL,
        line TEXT NOT NULL,
        PRIMARY KEY (size, witness)
    );
    CREATE TABLE IF NOT EXISTS witness_status (
        witness TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        size INTEGER NOT NULL,
        state TEXT NOT NULL,
        detail TEXT NOT NULL,
        t INTEGER NOT NULL
    );
    """,
    # 3 -> 4: the rules (docs/rules.md): each rule's per-device state under the applied set,
    # and each action entry's latest outcome (pending until one is recorded)
    """
    CREATE TABLE rule_state (
        set_entry INTEGER NOT NULL,
        rule INTEGER NOT NULL,
        dev TEXT NOT NULL,
        state BLOB NOT NULL,
        PRIMARY KEY (set_entry, rule, dev)
    );
    CREATE TABLE actions (
        entry INTEGER PRIMARY KEY,
        rule TEXT NOT NULL,
        status TEXT NOT NULL,
        outcome INTEGER
    );
    CREATE INDEX actions_status ON actions (status, entry);
    """,
    # 4 -> 5 (the operator console): per device and UTC day its anchored readings, its
    # refusals and its last commit time, written by the batch's transaction (none for the
    # time before the migration)
    """
    CREATE TABLE device_days (
        dev TEXT NOT NULL,
        day INTEGER NOT NULL,
        readings INTEGER NOT NULL DEFAULT 0,
        rejected INTEGER NOT NULL DEFAULT 0,
        last_t INTEGER,
        PRIMARY KEY (dev, day)
    );
    """,
    # 5 -> 6 (`run --shared` on the downlink): each device's last counter given by a gateway
    # of the group; a single gateway keeps its counters in memory (Store.downlink_epoch)
    """
    CREATE TABLE downlink_counters (
        dev TEXT PRIMARY KEY,
        epoch INTEGER NOT NULL,
        n INTEGER NOT NULL
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


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


class Store:
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

    # --- opening -------------------------------------------------------------------------------

    @classmethod
    def create(cls, data_dir: str | os.PathLike[str], store: str | None = None, *,
               key: Any = None) -> tuple[Store, str]:
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
             store: str | None = None) -> Store:
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
    def connect_new(cls, data_dir: Path, where: StoreLocation) -> Store:
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
                    readonly: bool = False) -> Store:
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
                 where: StoreLocation | None = None) -> Store:
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

    def __enter__(self) -> Store:
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
        appends). Refuses to sign anything that does not extend the last checkpoint."""
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
            old = merkle.range_root_from_nodes(
                lambda lv, ix: _node(c, lv, ix), 0, last[0]) if last[0] else merkle.EMPTY_ROOT
            if old != last[1]:
                raise IntegrityError(
                    f"the ledger tree's first {last[0]} entries no longer give the signed root",
                    "the database was changed outside iot-anchor; run 'iot-anchor ledger verify'")
        text = note.sign_checkpoint(size, root, signer)
        c.execute("INSERT INTO checkpoints (size, root, note) VALUES (?, ?, ?)", (size, root, text))
        c.execute("UPDATE meta SET value = ? WHERE key = 'ledger_range'", (tree.to_bytes(),))
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
            sql = ("SELECT dev, seq, cose FROM readings WHERE (dev, seq) IN (VALUES "
                   + ", ".join(["(?, ?)"] * len(part)) + ")")
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

    # --- rules (#15, docs/rules.md): rule sets, firings, outcomes, the engine's state -------

    def latest_rules(self, c: sqlite3.Connection | None = None) -> RecordEntry | None:
        """The newest `rules` entry (inside a transaction when `c` is given)."""
        sql = "SELECT body FROM entries WHERE kind = 'rules' ORDER BY i DESC LIMIT 1"
        if c is None:
            row = self.one(sql)
        else:
            row = c.execute(sql).fetchone()
        if row is None:
            return None
        e = decode_entry(bytes(row[0]))
        if not isinstance(e, RecordEntry):
            raise IntegrityError(f"entry {e.i} has kind column 'rules' but is a {e.kind} entry",
                                 "run 'iot-anchor ledger verify'")
        return e

    def apply_rules(self, signer: Any, text: str, digest: bytes) -> tuple[int, int, bool]:
        """Append a `rules` entry unless the newest one has the same digest, in one
        transaction. Returns (entry index, version, appended)."""
        with self.write() as c:
            latest = self.latest_rules(c)
            if latest is not None and latest.fields["digest"] == digest:
                return latest.i, int(latest.fields["version"]), False
            version = 1 if latest is None else int(latest.fields["version"]) + 1
            head = self.head(c)
            body = record_entry(head.size, head.last_hash, "rules",
                                {"text": text, "digest": digest, "version": version}, now_ms())
            e = self.append_entry(c, head, "rules", body)
            self.checkpoint(c, head.tree, signer)
            c.execute("DELETE FROM rule_state")  # the new set starts with fresh state
        return e.index, version, True

    def append_record_in(self, c: sqlite3.Connection, head: Head, kind: str,
                         fields: dict[str, Any], t: int, signer: Any) -> tuple[Head, int]:
        """Inside a write transaction: append a record entry at `head` and sign its checkpoint.
        Returns (the new head, the entry's index)."""
        body = record_entry(head.size, head.last_hash, kind, fields, t)
        e = self.append_entry(c, head, kind, body)
        head = Head(e.index + 1, e.hash, head.tree)
        self.checkpoint(c, head.tree, signer)
        if kind == "action":
            c.execute("INSERT INTO actions (entry, rule, status) VALUES (?, ?, 'pending')",
                      (e.index, fields["rule"]))
        return head, e.index

    def rule_states(self, set_entry: int,
                    c: sqlite3.Connection | None = None) -> list[tuple[int, str, bytes]]:
        sql = "SELECT rule, dev, state FROM rule_state WHERE set_entry = ?"
        rows = self.query(sql, (set_entry,)) if c is None else c.execute(sql, (set_entry,))
        return [(int(r), str(d), bytes(s)) for r, d, s in rows]

    def save_rule_states(self, c: sqlite3.Connection, set_entry: int,
                         states: list[tuple[int, str, bytes]]) -> None:
        c.executemany("INSERT INTO rule_state (set_entry, rule, dev, state) VALUES (?, ?, ?, ?) "
                      "ON CONFLICT (set_entry, rule, dev) DO UPDATE SET state = excluded.state",
                      [(set_entry, r, d, s) for r, d, s in states])

    def pending_actions(self, statuses: Sequence[str] = ("pending",),
                        after: int = -1) -> list[RecordEntry]:
        """Action entries above index `after` whose status is one of `statuses`, oldest
        first."""
        marks = ",".join("?" * len(statuses))
        out = []
        for (body,) in self.query(
                "SELECT e.body FROM actions a JOIN entries e ON e.i = a.entry "
                f"WHERE a.status IN ({marks}) AND a.entry > ? ORDER BY a.entry",
                (*statuses, after)):
            e = decode_entry(bytes(body))
            if isinstance(e, RecordEntry):
                out.append(e)
        return out

    # an action's status moves only forward: pending -> sent | failed; sent -> done | failed
    OUTCOME_FROM = {"sent": ("pending",), "failed": ("pending", "sent"), "done": ("sent",)}

    def record_outcomes(self, signer: Any,
                        outcomes: Sequence[tuple[int, str, str | None, bytes | None]]
                        ) -> list[int]:
        """For each (action entry, status, reason, confirmation) whose action's current status
        allows it (`OUTCOME_FROM`; the others are repeats and are skipped), append an `outcome`
        entry with its checkpoint and set the status, in one transaction. Returns the outcome
        entries' indexes."""
        out = []
        with self.write() as c:
            head = self.head(c)
            t = now_ms()
            for action, status, reason, confirmation in outcomes:
                row = c.execute("SELECT status FROM actions WHERE entry = ?", (action,)).fetchone()
                if row is None or row[0] not in self.OUTCOME_FROM[status]:
                    continue
                fields: dict[str, Any] = {"action": action, "status": status}
                if reason is not None:
                    fields["reason"] = reason[:1024]
                if confirmation is not None:
                    fields["confirmation"] = confirmation
                head, i = self.append_record_in(c, head, "outcome", fields, t, signer)
                c.execute("UPDATE actions SET status = ?, outcome = ? WHERE entry = ?",
                          (status, i, action))
                out.append(i)
        return out

    def data_version(self) -> int:
        """SQLite's data_version: it changes when another connection commits (unlike
        `changed_elsewhere`, reading it resets nothing)."""
        with self.lock:
            return self._pragma("data_version")

    def action_log(self, rule: str | None = None) -> list[tuple[RecordEntry, str, int | None]]:
        """(action entry, status, outcome index) for every firing, oldest first."""
        sql = ("SELECT e.body, a.status, a.outcome FROM actions a JOIN entries e ON e.i = a.entry"
               + (" WHERE a.rule = ?" if rule is not None else "") + " ORDER BY a.entry")
        out = []
        for body, status, outcome in self.query(sql, (rule,) if rule is not None else ()):
            e = decode_entry(bytes(body))
            if isinstance(e, RecordEntry):
                out.append((e, str(status), None if outcome is None else int(outcome)))
        return out


    # --- tlog tiles, witnesses, mirrors (#16; docs/tlog.md) ---------------------------------

    def cosignature_lines(self, size: int) -> list[str]:
        """The cosignature lines gathered for the checkpoint of `size`, by witness."""
        return [str(r[0]) for r in self.query(
            "SELECT line FROM cosignatures WHERE size = ? ORDER BY witness", (size,))]

    def add_cosignature(self, size: int, witness: str, line: str, url: str | None = None
                        ) -> None:
        """Store a witness's cosignature line; with `url`, its status ("ok", that size) in the
        same transaction."""
        with self.write() as c:
            c.execute("INSERT OR REPLACE INTO cosignatures (size, witness, line) "
                      "VALUES (?, ?, ?)", (size, witness, line))
            if url is not None:
                c.execute("INSERT OR REPLACE INTO witness_status (witness, url, size, state, "
                          "detail, t) VALUES (?, ?, ?, 'ok', ?, ?)",
                          (witness, url, size, f"cosigned size {size}", now_ms()))

    def relax_durability(self) -> None:
        """This connection's commits skip the fsync (WAL, synchronous=NORMAL): for writes whose
        loss on a power cut is harmless (a cosignature; later ones replace it), so they do not
        compete with the pipeline's commits for the disk."""
        with self.lock:
            try:
                self.conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as e:
                raise storage_error(e, self.path, "setting synchronous") from e

    def set_witness_status(self, witness: str, url: str, size: int, state: str,
                           detail: str) -> None:
        with self.write() as c:
            c.execute("INSERT OR REPLACE INTO witness_status (witness, url, size, state, "
                      "detail, t) VALUES (?, ?, ?, ?, ?, ?)",
                      (witness, url, size, state, detail, now_ms()))

    def set_witness_config(self, witnesses: list[tuple[str, str]], quorum: int) -> None:
        """`run --witness`: the witnesses (vkey, URL) and quorum now configured; the status
        of a witness no longer configured is dropped."""
        with self.write() as c:
            c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('witness_quorum', ?)",
                      (quorum,))
            keep = {v for v, _ in witnesses}
            for (w,) in c.execute("SELECT witness FROM witness_status").fetchall():
                if w not in keep:
                    c.execute("DELETE FROM witness_status WHERE witness = ?", (w,))
            for v, url in witnesses:
                c.execute("INSERT OR IGNORE INTO witness_status (witness, url, size, state, "
                          "detail, t) VALUES (?, ?, 0, 'pending', '', ?)", (v, url, now_ms()))
                c.execute("UPDATE witness_status SET url = ? WHERE witness = ?", (url, v))

    def witness_statuses(self) -> list[dict[str, Any]]:
        return [{"witness": w, "url": u, "size": int(n), "state": st, "detail": d, "t": int(t)}
                for w, u, n, st, d, t in self.query(
                    "SELECT witness, url, size, state, detail, t FROM witness_status "
                    "ORDER BY witness")]

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

    def best_checkpoint(self, index: int) -> tuple[int, str] | None:
        """The checkpoint to prove entry `index` under: of those covering it, the one with the
        most cosignatures, the latest among equals; (size, note with its cosignature lines)."""
        best = self.one("SELECT size, COUNT(*) AS n FROM cosignatures WHERE size > ? "
                        "GROUP BY size ORDER BY n DESC, size DESC LIMIT 1", (index,))
        latest = self.latest_checkpoint()
        if latest is None or latest[0] <= index:
            return None
        size = latest[0]
        if best is not None and len(self.cosignature_lines(size)) < int(best[1]):
            size = int(best[0])
        text = self.checkpoint_note(size)
        if text is None:
            return None
        return size, text + "".join(self.cosignature_lines(size))

    def with_best_checkpoint(self, parts: dict[str, Any]) -> dict[str, Any]:
        """Receipt parts (`receipt_parts`, `entry_receipt_parts`) moved onto `best_checkpoint`:
        the entry proof recomputed for its size, the note carrying its cosignatures."""
        best = self.best_checkpoint(int(parts["entry_index"]))
        if best is None:
            return parts
        size, text = best
        proof = self.entry_proof(int(parts["entry_index"]), size)
        return {**parts, "tree_size": size, "entry_proof": proof, "checkpoint": text}

    def tile_hashes(self, level: int, lo: int, hi: int) -> list[bytes]:
        """The stored ledger-tree nodes at tree `level` with lo <= index < hi, in order (a
        tile's hashes: level 8L, indices N*256 ..); fewer when the tree has fewer."""
        return [bytes(r[0]) for r in self.query(
            "SELECT hash FROM ledger_nodes WHERE level = ? AND idx >= ? AND idx < ? ORDER BY idx",
            (level, lo, hi))]

    def entry_bodies(self, lo: int, hi: int) -> list[bytes]:
        """Entries lo <= i < hi, in order (an entry bundle); fewer when there are fewer."""
        return [bytes(r[0]) for r in self.query(
            "SELECT body FROM entries WHERE i >= ? AND i < ? ORDER BY i", (lo, hi))]

    def batch_readings(self, entry: int) -> list[bytes] | None:
        """The COSE messages of batch entry `entry` in leaf order, or None if it is no batch."""
        with self.lock:
            try:
                row = self.conn.execute("SELECT first, n FROM batches WHERE entry = ?",
                                        (entry,)).fetchone()
                if row is None:
                    return None
                first, n = int(row[0]), int(row[1])
                out = [bytes(r[0]) for r in self.conn.execute(
                    "SELECT cose FROM readings WHERE id >= ? AND id < ? ORDER BY id",
                    (first, first + n))]
            except sqlite3.Error as e:
                self._forget_cache()
                raise storage_error(e, self.path, "reading the database") from e
        if len(out) != n:
            raise IntegrityError(f"batch {entry} is missing readings", "run 'iot-anchor ledger "
                                 "verify'")
        return out

    # --- operator console (#17): bounded reads, each on an index ------------------------------
    # gateway/console calls these on its own read-only Store (one per reader thread).

    # a device's last commit with readings (the devices table's "last seen"), on device_days'
    # primary key
    CONSOLE_LAST_T = ("(SELECT l.last_t FROM device_days l WHERE l.dev = d.id AND l.last_t IS "
                      "NOT NULL ORDER BY l.day DESC LIMIT 1)")
    CONSOLE_SORTS = {  # devices table: sort key -> SQL expression
        "id": "d.id", "status": "d.status", "readings": "d.readings",
        "last_seq": "COALESCE(d.last_seq, -1)", "last_seen": f"COALESCE({CONSOLE_LAST_T}, 0)",
        "gaps": "COALESCE(d.last_seq + 1 - d.readings, 0)", "today": "COALESCE(t.readings, 0)",
        "rejected_today": "COALESCE(t.rejected, 0)",
    }

    def console_figures(self) -> dict[str, Any]:
        """The ledger's totals: what `ledger status` counts, without its per-device lists."""
        devices, revoked = self.one(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN status = 'revoked' THEN 1 ELSE 0 END), 0) "
            "FROM devices")
        last = self.one("SELECT body FROM entries ORDER BY i DESC LIMIT 1")
        cp = self.latest_checkpoint()
        return {
            "readings": self.reading_count(), "entries": self.entry_count(),
            "devices": int(devices), "revoked": int(revoked),
            "checkpoint_size": cp[0] if cp else 0, "checkpoint": cp[1] if cp else None,
            "last_entry_t": decode_entry(bytes(last[0])).t if last else None,
            "rejected": self.rejected_counts(),
            "events": {k: int(n) for k, n in self.query(
                "SELECT kind, COUNT(*) FROM events GROUP BY kind ORDER BY kind")},
            "cosignatures": len(self.cosignature_lines(cp[0])) if cp else 0,
            "witnesses": self.witness_statuses(),
        }

    def console_devices(self, *, day: int, sort: str = "id", desc: bool = False,
                        q: str = "", status: str = "", offset: int = 0,
                        limit: int = 100) -> tuple[int, list[dict[str, Any]]]:
        """One page of the devices table: (rows matching, the page). `q` filters ids by
        substring, `status` by status; `day` is the UTC day of "today" (ms // 86,400,000)."""
        where, args = [], []
        if q:
            where.append("d.id LIKE ? ESCAPE '\\'")
            args.append("%" + q.replace("\\", "\\\\").replace("%", "\\%")
                        .replace("_", "\\_") + "%")
        if status:
            where.append("d.status = ?")
            args.append(status)
        cond = (" WHERE " + " AND ".join(where)) if where else ""
        total = int(self.one(f"SELECT COUNT(*) FROM devices d{cond}", args)[0])
        order = self.CONSOLE_SORTS[sort] + (" DESC" if desc else "")
        rows = self.query(
            f"SELECT d.id, d.key, d.status, d.entry, d.readings, d.last_seq, d.upto, "
            f"{self.CONSOLE_LAST_T}, "
            "COALESCE(t.readings, 0), COALESCE(t.rejected, 0) FROM devices d "
            "LEFT JOIN device_days t ON t.dev = d.id AND t.day = ?"
            f"{cond} ORDER BY {order}, d.id LIMIT ? OFFSET ?", [day, *args, limit, offset])
        out = []
        for dev, key, st, entry, n, last_seq, upto, last_t, today, rej in rows:
            out.append({"id": dev, "key": bytes(key), "status": st, "entry": entry,
                        "readings": n, "last_seq": last_seq, "upto": upto, "last_t": last_t,
                        "today": today, "rejected_today": rej,
                        "missing": 0 if last_seq is None else last_seq + 1 - n})
        return total, out

    def console_last_seen(self, dev: str) -> int | None:
        """The time (ms) of the last commit with readings of `dev` (None: none since the
        console's migration, schema 4)."""
        row = self.one("SELECT last_t FROM device_days WHERE dev = ? AND last_t IS NOT NULL "
                       "ORDER BY day DESC LIMIT 1", (dev,))
        return None if row is None or row[0] is None else int(row[0])

    def console_key_history(self, dev: str) -> list[tuple[bytes, int, int | None]]:
        """A device's keys: (key, from entry, until entry or None), oldest first."""
        return [(bytes(k), int(a), b) for k, a, b in self.query(
            "SELECT key, from_entry, until_entry FROM device_keys WHERE dev = ? "
            "ORDER BY from_entry LIMIT 1000", (dev,))]

    def console_gaps(self, dev: str, after: int, last: int, *, max_gaps: int = 20,
                     max_rows: int = 20_000) -> tuple[list[list[int]], int | None]:
        """The missing seq ranges [lo, hi] of `dev` between `after` (its watermark `upto`:
        every seq up to it is stored) and `last` (its highest seq): at most `max_gaps` ranges,
        walking at most `max_rows` entries of the (dev, seq) index. Also the seq the walk
        stopped at when it stopped short of `last` (None: every gap is listed)."""
        gaps: list[list[int]] = []
        prev, walked = after, 0
        while prev < last and len(gaps) < max_gaps and walked < max_rows:
            rows = self.query("SELECT seq FROM readings WHERE dev = ? AND seq > ? ORDER BY seq "
                              "LIMIT 2000", (dev, prev))
            if not rows:
                break
            walked += len(rows)
            for (s,) in rows:
                if s > prev + 1:
                    gaps.append([prev + 1, int(s) - 1])
                prev = int(s)
                if len(gaps) >= max_gaps:
                    break
        return gaps, (None if prev >= last else prev)

    def console_device_days(self, dev: str, limit: int = 31) -> list[tuple[int, int, int]]:
        """(day, readings, rejected) of a device's newest `limit` days, newest first."""
        return [(int(d), int(n), int(r)) for d, n, r in self.query(
            "SELECT day, readings, rejected FROM device_days WHERE dev = ? ORDER BY day DESC "
            "LIMIT ?", (dev, limit))]

    def console_reading_from(self, dev: str, seq: int) -> tuple[int, int, bytes] | None:
        """The stored reading of `dev` with the smallest seq >= `seq`: (seq, batch, cose)."""
        row = self.one("SELECT seq, batch, cose FROM readings WHERE dev = ? AND seq >= ? "
                       "ORDER BY seq LIMIT 1", (dev, seq))
        return (int(row[0]), int(row[1]), bytes(row[2])) if row else None

    def console_seq_bounds(self, dev: str) -> tuple[int, int] | None:
        """The smallest and largest stored seq of `dev`."""
        lo = self.one("SELECT MIN(seq), MAX(seq) FROM readings WHERE dev = ?", (dev,))
        return None if lo is None or lo[0] is None else (int(lo[0]), int(lo[1]))

    def console_count(self, dev: str, lo: int, hi: int) -> int:
        """Stored readings of `dev` with lo <= seq <= hi."""
        return int(self.one("SELECT COUNT(*) FROM readings WHERE dev = ? AND seq BETWEEN ? "
                            "AND ?", (dev, lo, hi))[0])

    def console_readings(self, dev: str, lo: int, hi: int, limit: int, *,
                         newest: bool = False) -> list[tuple[int, int, bytes]]:
        """(seq, batch, cose) of `dev` with lo <= seq <= hi, at most `limit`, by seq (the
        newest first with `newest`)."""
        order = "DESC" if newest else "ASC"
        return [(int(a), int(b), bytes(c)) for a, b, c in self.query(
            f"SELECT seq, batch, cose FROM readings WHERE dev = ? AND seq BETWEEN ? AND ? "
            f"ORDER BY seq {order} LIMIT ?", (dev, lo, hi, limit))]

    def console_entry_times(self, entries: Sequence[int]) -> dict[int, int]:
        """Entry index -> its time `t` (ms), for the given entries (at most 1,000)."""
        out: dict[int, int] = {}
        for i in sorted(set(entries))[:1000]:
            body = self.entry_body(i)
            if body is not None:
                out[i] = decode_entry(body).t
        return out

    def console_events(self, dev: str | None, limit: int = 100) -> list[dict[str, Any]]:
        """A device's newest security events (all devices' with dev None), newest first."""
        sql = "SELECT id, kind, dev, seq, detail, t FROM events"
        rows = self.query(sql + " WHERE dev = ? ORDER BY seq DESC, id DESC LIMIT ?",
                          (dev, limit)) if dev is not None else self.query(
            sql + " ORDER BY id DESC LIMIT ?", (limit,))
        return [{"id": a, "kind": k, "dev": d, "seq": s, "detail": x, "t": t}
                for a, k, d, s, x, t in rows]

    def console_batches_since(self, since_ms: int, limit: int = 20_000
                              ) -> list[tuple[int, int]]:
        """(t, n) of the newest batch entries with t >= since_ms, newest first, at most
        `limit` (the entries_kind index, newest first; stops at the first older one)."""
        out: list[tuple[int, int]] = []
        before = 1 << 62
        while len(out) < limit:
            rows = self.query("SELECT i, body FROM entries WHERE kind = 'batch' AND i < ? "
                              "ORDER BY i DESC LIMIT 500", (before,))
            for i, body in rows:
                e = decode_entry(bytes(body))
                if e.t < since_ms or len(out) >= limit:
                    return out
                out.append((e.t, getattr(e, "n", 0)))
                before = i
            if len(rows) < 500:
                break
        return out

    def console_kinds_present(self, kinds: Sequence[str]) -> list[str]:
        """Those of `kinds` that have at least one entry."""
        return [k for k in kinds
                if self.one("SELECT 1 FROM entries WHERE kind = ? LIMIT 1", (k,))]

    def console_records(self, kind: str, *, before: int | None = None,
                        limit: int = 50) -> list[RecordEntry]:
        """The newest `limit` entries of a record kind below entry `before`, newest first."""
        rows = self.query("SELECT body FROM entries WHERE kind = ? AND i < ? ORDER BY i DESC "
                          "LIMIT ?", (kind, (1 << 62) if before is None else before, limit))
        out = []
        for (body,) in rows:
            e = decode_entry(bytes(body))
            if isinstance(e, RecordEntry):
                out.append(e)
        return out


    # --- mirrors (#16; gateway/tlog/mirror.py): a replica holds no gateway key ------------

    @classmethod
    def create_mirror(cls, data_dir: str | os.PathLike[str], vkey: str, source: str) -> Store:
        """A new, empty data directory for a mirror of the log at `source` signed by `vkey`:
        no gateway.key (a mirror signs nothing), gateway.vkey, meta mirror_of = source; the
        database where --store says (default DIR/ledger.db)."""
        d = Path(data_dir)
        where = parse_store(None, d)
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            raise ConfigError(f"data directory {d} already exists and is not a mirror",
                              "pick another --data DIR for the mirror, or remove it first")
        if where.kind == "postgresql":
            cls.check_empty_pg(where)
        try:
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)
            (d / VKEY_NAME).write_text(vkey + "\n")
        except OSError as e:
            raise StorageError(f"cannot create mirror directory {d}: {e.strerror}",
                               "check the path and its permissions") from e
        store = cls._connect(d, create=True, where=where)
        with store.write() as c:
            c.execute("INSERT INTO meta VALUES ('gateway_vkey', ?)", (vkey,))
            c.execute("INSERT INTO meta VALUES ('created', ?)", (now_ms(),))
            c.execute("INSERT INTO meta VALUES ('ledger_range', ?)",
                      (merkle.CompactRange().to_bytes(),))
            c.execute("INSERT INTO meta VALUES ('mirror_of', ?)", (source,))
        return store

    def key_history(self) -> dict[str, list[tuple[bytes, int, int | None]]]:
        """dev -> [(SEC1 key, from entry, until entry or None)], oldest first."""
        out: dict[str, list[tuple[bytes, int, int | None]]] = {}
        for dev, key, f, u in self.query("SELECT dev, key, from_entry, until_entry FROM "
                                         "device_keys ORDER BY dev, from_entry"):
            out.setdefault(str(dev), []).append((bytes(key), int(f),
                                                 None if u is None else int(u)))
        return out

    def stored_reading(self, c: sqlite3.Connection, dev: str, seq: int) -> bytes | None:
        row = c.execute("SELECT cose FROM readings WHERE dev = ? AND seq = ?",
                        (dev, seq)).fetchone()
        return bytes(row[0]) if row else None

    def mirror_device(self, c: sqlite3.Connection, index: int, dev: str, key: bytes,
                      action: str) -> None:
        """The registry tables after device entry `index` (as `device_event` keeps them)."""
        if action == "add":
            c.execute("INSERT INTO devices (id, key, status, entry) VALUES (?, ?, 'active', ?)",
                      (dev, key, index))
            c.execute("INSERT INTO device_keys VALUES (?, ?, ?, NULL)", (dev, key, index))
            return
        c.execute("UPDATE device_keys SET until_entry = ? WHERE dev = ? AND until_entry IS NULL",
                  (index, dev))
        if action == "rotate":
            c.execute("INSERT INTO device_keys VALUES (?, ?, ?, NULL)", (dev, key, index))
            c.execute("UPDATE devices SET key = ?, entry = ? WHERE id = ?", (key, index, dev))
        else:
            c.execute("UPDATE devices SET status = 'revoked', entry = ? WHERE id = ?",
                      (index, dev))

    def mirror_batch(self, c: sqlite3.Connection, index: int, root: bytes, nodes: list[bytes],
                     readings: list[tuple[str, int, bytes]]) -> None:
        """Store batch entry `index`'s readings (dev, seq, COSE) in leaf order, and move each
        device's counters (readings, last_seq, upto) as the pipeline does."""
        row = c.execute("SELECT MAX(id) FROM readings").fetchone()
        first = 0 if row[0] is None else int(row[0]) + 1
        c.execute("INSERT INTO batches (entry, first, n, root, nodes) VALUES (?, ?, ?, ?, ?)",
                  (index, first, len(readings), root, b"".join(nodes)))
        c.executemany("INSERT INTO readings (id, dev, seq, batch, cose) VALUES (?, ?, ?, ?, ?)",
                      [(first + k, d, q, index, m) for k, (d, q, m) in enumerate(readings)])
        by_dev: dict[str, list[int]] = {}
        for d, q, _ in readings:
            by_dev.setdefault(d, []).append(q)
        for dev, seqs in by_dev.items():
            r = c.execute("SELECT upto, last_seq FROM devices WHERE id = ?", (dev,)).fetchone()
            upto = int(r[0]) if r else -1
            last = max(r[1] if r and r[1] is not None else -1, max(seqs))
            while c.execute("SELECT 1 FROM readings WHERE dev = ? AND seq = ?",
                            (dev, upto + 1)).fetchone():
                upto += 1
            c.execute("UPDATE devices SET readings = readings + ?, last_seq = ?, upto = ? "
                      "WHERE id = ?", (len(seqs), last, upto, dev))

    def mirror_event(self, c: sqlite3.Connection, kind: str, dev: str, seq: int, detail: str
                     ) -> None:
        c.execute("INSERT INTO events (kind, dev, seq, cose, detail, t) VALUES (?,?,?,?,?,?)",
                  (kind, dev, seq, None, detail, now_ms()))

    def mirror_checkpoint(self, c: sqlite3.Connection, tree: merkle.CompactRange, text: str,
                          cosigs: dict[str, str]) -> None:
        """Store a fetched checkpoint (the gateway's note, its size the tree's) and its
        cosignature lines (by witness); the tree's compact range becomes the ledger head."""
        size, root = tree.size, tree.root()
        c.execute("INSERT OR IGNORE INTO checkpoints (size, root, note) VALUES (?, ?, ?)",
                  (size, root, text))
        for w, line in cosigs.items():
            c.execute("INSERT OR REPLACE INTO cosignatures (size, witness, line) VALUES (?,?,?)",
                      (size, w, line))
        c.execute("UPDATE meta SET value = ? WHERE key = 'ledger_range'", (tree.to_bytes(),))

    def ledger_root_at(self, size: int) -> bytes:
        """The ledger tree's root at `size` from the stored nodes (EMPTY_ROOT for 0)."""
        if size == 0:
            return merkle.EMPTY_ROOT
        with self.lock:
            return self._range_root(0, size)
    # --- several gateways on one ledger (#18: run --shared) -----------------------------------

    def registry_version(self) -> int:
        """The index of the newest device entry (-1: none): it changes with every registry
        change (add, revoke, rotate), and with nothing else."""
        row = self.one("SELECT MAX(i) FROM entries WHERE kind = 'device'")
        return -1 if row is None or row[0] is None else int(row[0])

    def claim_shared_group(self, group: str) -> None:
        """`run --shared GROUP`: record GROUP as the ledger's one shared-subscription group
        (meta ``shared_group``), or check that it is the recorded one. Two groups on one
        ledger would each receive every reading."""
        with self.write() as c:
            row = c.execute("SELECT value FROM meta WHERE key = 'shared_group'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta (key, value) VALUES ('shared_group', ?)", (group,))
                return
        if str(row[0]) != group:
            raise ConfigError(
                f"the ledger in {self.location} belongs to the shared group {row[0]!r}, not "
                f"{group!r}", f"give --shared {row[0]} (one ledger, one group: two groups "
                "would each get every reading); to move the ledger to another group, stop the "
                f"gateways of {row[0]!r} and run 'iot-anchor store group --set {group}'")

    def set_shared_group(self, group: str | None) -> None:
        """`store group --set GROUP` / `--clear`: the recorded group, changed by the operator."""
        with self.write() as c:
            c.execute("DELETE FROM meta WHERE key = 'shared_group'")
            if group is not None:
                c.execute("INSERT INTO meta (key, value) VALUES ('shared_group', ?)", (group,))


    # --- provenance: datasets and models (gateway/provenance/) --------------------------------

    def provenance_readings(self, devices: Sequence[str], below: int,
                            chunk: int = 4096) -> Iterator[list[tuple[int, str, int, int, bytes]]]:
        """The readings of batch entries below `below` (of `devices`, all when empty), as lists
        of (id, dev, seq, batch entry, COSE bytes) in (dev, seq) order, `chunk` at a time.
        One SELECT: a consistent snapshot, streamed (memory bounded by `chunk`)."""
        where = "batch < ?"
        args: list[Any] = [below]
        if devices:
            where += f" AND dev IN ({', '.join('?' * len(devices))})"
            args += list(devices)
        with self.lock:
            try:
                cur = self.conn.execute(
                    f"SELECT id, dev, seq, batch, cose FROM readings WHERE {where} "
                    "ORDER BY dev, seq", args)
            except sqlite3.Error as e:
                raise storage_error(e, self.path, "reading the database") from e
        try:
            while True:
                with self.lock:
                    try:
                        rows = cur.fetchmany(chunk)
                    except sqlite3.Error as e:
                        raise storage_error(e, self.path, "reading the database") from e
                if not rows:
                    return
                yield [(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]
        finally:
            cur.close()

    def provenance_count(self, devices: Sequence[str], below: int) -> int:
        """How many readings `provenance_readings` goes through."""
        where, args = "batch < ?", [below, *devices]
        if devices:
            where += f" AND dev IN ({', '.join('?' * len(devices))})"
        return int(self.one(f"SELECT COUNT(*) FROM readings WHERE {where}", args)[0])

    def batch_row(self, entry: int) -> tuple[int, int, bytes, bytes] | None:
        """(first reading id, n, root, group roots blob) of the batch of ledger entry `entry`."""
        r = self.one("SELECT first, n, root, nodes FROM batches WHERE entry = ?", (entry,))
        return (int(r[0]), int(r[1]), bytes(r[2]), bytes(r[3])) if r else None

    def cose_range(self, lo: int, hi: int) -> list[bytes]:
        """The COSE bytes of readings with ids lo <= id < hi, in id order."""
        return [bytes(r[0]) for r in self.query(
            "SELECT cose FROM readings WHERE id >= ? AND id < ? ORDER BY id", (lo, hi))]

    def entries_of_kind(self, kind: str, below: int) -> list[tuple[int, bytes]]:
        """(index, bytes) of the entries of `kind` with index < below, in ledger order."""
        return [(int(i), bytes(b)) for i, b in self.query(
            "SELECT i, body FROM entries WHERE kind = ? AND i < ? ORDER BY i", (kind, below))]

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

    # --- downlink (issue 15): the epoch of the downlink counters ------------------------------

    def downlink_epoch(self, now_s: int) -> int:
        """A new downlink epoch, durably: max(last + 1, now_s), stored before it is returned.
        Every sealed message's counter is epoch * 2^32 + n (gateway/downlink), so each start
        of the gateway counts above every counter it ever used, with one write per start; the
        clock term keeps that true after a backup of the database is restored."""
        with self.write() as c:
            row = c.execute("SELECT value FROM meta WHERE key = 'downlink_epoch'").fetchone()
            epoch = max(int(row[0]) + 1 if row else 0, now_s)
            if row:
                c.execute("UPDATE meta SET value = ? WHERE key = 'downlink_epoch'", (epoch,))
            else:
                c.execute("INSERT INTO meta (key, value) VALUES ('downlink_epoch', ?)", (epoch,))
        return epoch

    def next_downlink_counters(self, devices: Sequence[str],
                               epoch: int) -> dict[str, tuple[int, int]]:
        """Each device's next downlink counter for a gateway of a shared group, as (epoch, n):
        (epoch, 1) when the device's stored epoch is below `epoch` (or it has none), else the
        stored (epoch, n + 1). One atomic statement per 500 devices, outside the sequencer
        lock: two gateways never get one counter, and each device's counters only grow."""
        if self.readonly:
            raise StorageError(f"{self.location} is open read-only", "open it read-write")
        out: dict[str, tuple[int, int]] = {}
        devs = sorted(set(devices))  # one row once per statement; a fixed order of row locks
        with self.lock:
            try:
                for k in range(0, len(devs), 500):
                    part = devs[k:k + 500]
                    rows = self.conn.execute(
                        "INSERT INTO downlink_counters (dev, epoch, n) VALUES "
                        + ", ".join(["(?, ?, 1)"] * len(part))
                        + " ON CONFLICT (dev) DO UPDATE SET"
                        " n = CASE WHEN downlink_counters.epoch < excluded.epoch THEN 1"
                        " ELSE downlink_counters.n + 1 END,"
                        " epoch = CASE WHEN downlink_counters.epoch < excluded.epoch"
                        " THEN excluded.epoch ELSE downlink_counters.epoch END"
                        " RETURNING dev, epoch, n",
                        [v for d in part for v in (d, epoch)]).fetchall()
                    for dev, e, n in rows:
                        out[str(dev)] = (int(e), int(n))
            except sqlite3.Error as e:
                raise storage_error(e, self.path, "taking downlink counters") from e
        return out


def _node(c: sqlite3.Connection, level: int, idx: int) -> bytes:
    row = c.execute("SELECT hash FROM ledger_nodes WHERE level = ? AND idx = ?",
                    (level, idx)).fetchone()
    if row is None:
        raise IntegrityError(f"ledger_nodes has no node (level {level}, index {idx})",
                             "run 'iot-anchor ledger verify'")
    return bytes(row[0])

