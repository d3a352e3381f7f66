"""The gateway's data directory and its database: `Store`, which joins the store's parts.
The schema and its migrations are in gateway/storage/schema.py.

Data directory (``--data DIR``)::

    DIR/ledger.db       SQLite database (WAL, synchronous=FULL), unless --store names another
                        store (gateway/storage/location.py): a PostgreSQL database holds the
                        same tables then (gateway/storage/postgres.py)
    DIR/gateway.key     the gateway's Ed25519 signing key, PKCS#8 PEM, mode 0600
    DIR/gateway.vkey    its public key in C2SP vkey form (a copy for convenience; the audit
                        and receipts take the vkey from the operator, not from here)

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

from gateway.storage.console_rows import ConsoleRows
from gateway.storage.core import (
    KEY_NAME,
    VKEY_NAME,
    ZERO_HASH,
    Appended,
    DeviceRow,
    Head,
    StoreCore,
    now_ms,
    storage_error,
)
from gateway.storage.downlink_rows import DownlinkRows
from gateway.storage.location import DB_NAME
from gateway.storage.mirror_rows import MirrorRows
from gateway.storage.provenance_rows import ProvenanceRows
from gateway.storage.rules_rows import RulesRows
from gateway.storage.schema import MIGRATIONS, SCHEMA_VERSION
from gateway.storage.shared_rows import SharedGroupRows
from gateway.storage.tlog_rows import TlogRows

__all__ = ["DB_NAME", "KEY_NAME", "MIGRATIONS", "SCHEMA_VERSION", "VKEY_NAME", "ZERO_HASH",
           "Appended", "DeviceRow", "Head", "Store", "StoreCore", "now_ms", "storage_error"]


class Store(RulesRows, ConsoleRows, TlogRows, MirrorRows, SharedGroupRows, ProvenanceRows,
            DownlinkRows):
    """One open data directory. Thread-safe (one lock around the one connection).

    The ledger's own tables and the transactions are `StoreCore`'s
    (gateway/storage/core.py); each feature's tables are a part of their own
    (gateway/storage/*_rows.py), all subclasses of it, joined here."""
