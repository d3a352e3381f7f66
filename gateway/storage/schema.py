"""The database schema: `MIGRATIONS[k]` takes a database from version k to k+1 (opening a
database runs the missing ones in one transaction; gateway/storage/core.py), and
`SCHEMA_VERSION` is the current version (``PRAGMA user_version`` on SQLite, the table
``iot_anchor_schema`` on PostgreSQL). The same statements make both engines' tables
(gateway/storage/postgres.py translates them).

The tables:

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
"""

from __future__ import annotations

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
