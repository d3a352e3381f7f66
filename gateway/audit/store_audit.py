"""`ledger verify`: an audit that trusts nothing in the database but the gateway's public key.

What it recomputes and compares, in this order (the first difference is reported as
``<table> <id>: <what differs>``; `audit()` returns all problems found, up to a limit):

1. ``entries``: rows 0..N-1 without holes; each body decodes strictly (gateway.ledger.entry),
   names its own index, links to SHA-256 of the previous body (32 zero bytes for entry 0),
   matches the ``hash`` and ``kind`` columns. Device entries are replayed into the key history
   (an "add" of a new id, "rotate"/"revoke" of an active one).
2. ``ledger_nodes`` and ``meta.ledger_range``: equal to the ledger tree rebuilt from the entries.
3. ``checkpoints``: one per ledger size 1..N (the gateway signs one after every entry; a
   mirror, marked by ``meta.mirror_of``, holds only those it fetched, the latest at N), each
   signed by the gateway key with the right origin, its size and root equal to the rebuilt tree
   at that size, and its ``root`` column equal to what the note says.
4. ``batches`` and ``readings``, batch by batch: the batch row matches its entry (n, root),
   readings ids are dense and in batch order, every reading decodes strictly, its dev/seq/batch
   columns match the message, its ES256 signature (low-S) verifies against the key that was
   valid at that entry (from the replayed history; on the verifier pool), and the RFC 6962 root and
   16-leaf group nodes recomputed from the COSE bytes equal the entry's root and the stored ones.
5. Each device's seq/prev chain: for stored seqs s and s+1, prev(s+1) = SHA-256(message s)
   unless a chain_break event is recorded for (dev, s+1); seq 0 must have prev = 32 zero bytes.
   No (dev, seq) is stored twice.
6. ``devices`` and ``device_keys`` equal the replayed history (key, status, the index of the
   device's latest entry); the per-device counters (readings, last_seq, upto) equal what the
   readings give.
7. Record entries (rule sets, datasets, models, ...): each kind's own checks, from
   `RECORD_AUDITS` (kind -> a function of the auditor and the kind's entries in ledger order),
   after everything above; a kind with no function is covered by steps 1-3 alone.

Not covered (not in the ledger, so nothing can prove them): the rejection counters and the
equivocation events. The checkpoint is what an outside party holds; a consistent rewrite of the
whole database with the gateway key is out of scope (see docs/security.md).
"""

from __future__ import annotations

import hashlib
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from gateway.audit import provenance_audit, rules_audit
from gateway.errors import AnchorError
from gateway.ingest.verifier import CHUNK, Context, VerifierPool
from gateway.ledger import merkle, note
from gateway.ledger.batch import GROUP, batch_nodes
from gateway.ledger.entry import BatchEntry, DeviceEntry, EntryError, RecordEntry, decode_entry
from gateway.storage.store import Store, storage_error
from gateway.wire.cose import Rejection, decode
from gateway.wire.es256 import PublicKey, check_signature, load_public_key

ZERO_HASH = bytes(32)
MAX_PROBLEMS = 100
READ_CHUNK = 8192


@dataclass
class _Key:
    key: bytes
    pub: PublicKey | None
    from_entry: int
    until_entry: int | None = None


@dataclass
class AuditResult:
    problems: list[str] = field(default_factory=list)
    entries: int = 0
    readings: int = 0
    checkpoints: int = 0
    devices: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


class _Stop(Exception):
    pass


def _lenient_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


_Result = tuple[bytes, str | None, bytes, bytes, int, str]


@dataclass
class _Group:
    """Consecutive batches whose readings are being verified on the pool."""

    group: Sequence[BatchEntry]
    lo: int  # first reading id
    hi: int  # one past the last reading id
    items: list[tuple[int, str, int, int, bytes, int]]
    brows: dict[int, Any]
    ahead: Iterator[list[_Result]]
    missing: tuple[int, str] | None = None


class Progress:
    """A one-line progress bar on stderr, shown only when stderr is a terminal."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total = max(total, 1)
        self.enabled = self.stream.isatty()
        self.last = 0.0

    def update(self, done: int, label: str = "readings") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.1 and done < self.total:
            return
        self.last = now
        frac = min(1.0, done / self.total)
        bar = "#" * int(frac * 30)
        self.stream.write(f"\rverifying {label} [{bar:<30}] {done}/{self.total} {frac:4.0%}")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


# Each record kind's own audit (step 7 of the module docstring): called once with all the
# kind's entries in ledger order, it reports what is wrong through `auditor.problem`.
RecordAudit = Callable[["Auditor", list[RecordEntry]], None]
RECORD_AUDITS: dict[str, RecordAudit] = {
    "dataset": provenance_audit.audit_datasets,
    "model": provenance_audit.audit_models,
    **rules_audit.AUDITS,  # rules, action, outcome: the rule sets re-run (docs/rules.md)
}


class Auditor:
    def __init__(self, store: Store, vkey: str, *, workers: int = 2,
                 progress: Progress | None = None, max_problems: int = MAX_PROBLEMS) -> None:
        self.store = store
        self.c: sqlite3.Connection = store.conn
        self.vkey = vkey
        self.workers = workers
        self.progress = progress
        self.max_problems = max_problems
        self.result = AuditResult()
        self.history: dict[str, list[_Key]] = {}
        self.status: dict[str, str] = {}
        self.batch_entries: list[BatchEntry] = []
        self.records: dict[str, list[RecordEntry]] = {}  # kind -> its entries, in ledger order
        self.chain_breaks: set[tuple[str, int]] = set()
        self.last_entry: dict[str, int] = {}  # dev -> index of its latest device entry

    def problem(self, table: str, ident: Any, what: str) -> None:
        self.result.problems.append(f"{table} {ident}: {what}")
        if len(self.result.problems) >= self.max_problems:
            raise _Stop

    def run(self) -> AuditResult:
        t0 = time.perf_counter()
        with self.store.lock:
            # Trust no column's storage class either: TEXT that is not UTF-8 (in any column)
            # is read with U+FFFD in place of the bad bytes, so it differs from what the ledger
            # says and is named, instead of stopping the audit. (BLOB columns are read with
            # CAST(... AS BLOB), which also turns a number or text there into bytes.)
            factory = self.c.text_factory
            self.c.text_factory = _lenient_text
            try:
                self.c.execute("BEGIN")  # one consistent snapshot
                try:
                    self._run()
                except _Stop:
                    pass
                finally:
                    self.c.execute("ROLLBACK")
            except sqlite3.Error as e:
                raise storage_error(e, self.store.path, "auditing the database") from e
            finally:
                self.c.text_factory = factory
        self.result.seconds = time.perf_counter() - t0
        return self.result

    def _run(self) -> None:
        # the verifier processes (for a ledger worth them) start now, and get ready while
        # steps 1-3 run
        pool = VerifierPool(self.workers)
        if (self.c.execute("SELECT MAX(id) FROM readings").fetchone()[0] or 0) > 4 * CHUNK:
            pool.start()
        try:
            roots = self._entries()
            self._checkpoints(roots)
            self.chain_breaks = {(d, s) for d, s in self.c.execute(
                "SELECT dev, seq FROM events WHERE kind = 'chain_break'")}
            self._readings(pool)
        finally:
            pool.close()
        self._devices()
        for kind, entries in self.records.items():
            check = RECORD_AUDITS.get(kind)
            if check is not None:
                check(self, entries)

    # 1-2 ------------------------------------------------------------------------------------

    def _entries(self) -> list[bytes]:
        """Check the entries; return the ledger-tree root at every size 0..N."""
        tree = merkle.CompactRange()
        roots = [merkle.EMPTY_ROOT]
        prev = ZERO_HASH
        expect = 0
        # stored nodes in the order appends complete them: node (L, k) is completed by leaf
        # (k + 1) * 2**L - 1, lower levels first; compared as a stream (no table in memory)
        nodes = self.c.execute(
            "SELECT level, idx, CAST(hash AS BLOB) FROM ledger_nodes "
            "ORDER BY ((idx + 1) << CAST(level AS INTEGER)) - 1, level")
        stored = nodes.fetchone()
        nodes_ok = True
        rows = self.c.execute("SELECT i, kind, CAST(body AS BLOB), CAST(hash AS BLOB) FROM entries "
                              "ORDER BY i")
        for i, kind, body, h in rows:
            if i != expect:
                self.problem("entries", expect, f"row is missing (next row is {i})")
                return roots
            expect += 1
            body = bytes(body)
            try:
                e = decode_entry(body)
            except EntryError as err:
                self.problem("entries", i, f"body does not decode: {err.what}")
                return roots
            if e.i != i:
                self.problem("entries", i, f"body says i={e.i}")
            if e.prev != prev:
                self.problem("entries", i, f"prev {e.prev.hex()} != hash of entry {i - 1} "
                                           f"{prev.hex()}")
            prev = hashlib.sha256(body).digest()
            if bytes(h) != prev:
                self.problem("entries", i, f"hash column {bytes(h).hex()} != SHA-256 of the body "
                                           f"{prev.hex()}")
            if kind != e.kind:
                self.problem("entries", i, f"kind column {kind!r} != body kind {e.kind!r}")
            for lv, ix, nh in tree.append(merkle.leaf_hash(body)):
                if not nodes_ok:
                    continue
                if stored is None or (stored[0], stored[1]) != (lv, ix):
                    self.problem("ledger_nodes", f"({lv}, {ix})", "row is missing")
                    nodes_ok = False
                    continue
                if bytes(stored[2]) != nh:
                    self.problem("ledger_nodes", f"({lv}, {ix})",
                                 f"hash {bytes(stored[2]).hex()} != recomputed {nh.hex()}")
                stored = nodes.fetchone()
            roots.append(tree.root())
            if isinstance(e, DeviceEntry):
                self._device_entry(e)
            elif isinstance(e, BatchEntry):
                self.batch_entries.append(e)
            else:
                self.records.setdefault(e.kind, []).append(e)
        self.result.entries = expect
        if nodes_ok and stored is not None:
            self.problem("ledger_nodes", f"({stored[0]}, {stored[1]})",
                         "row is not a node of the ledger tree")
        blob = self.c.execute(
            "SELECT CAST(value AS BLOB) FROM meta WHERE key = 'ledger_range'").fetchone()
        if blob is None or bytes(blob[0]) != tree.to_bytes():
            self.problem("meta", "ledger_range", "differs from the ledger tree rebuilt from "
                                                 "the entries")
        return roots

    def _device_entry(self, e: DeviceEntry) -> None:
        self.last_entry[e.dev] = e.i
        hist = self.history.setdefault(e.dev, [])
        active = hist[-1] if hist and hist[-1].until_entry is None else None
        try:
            pub = load_public_key(e.key)
        except AnchorError:
            self.problem("entries", e.i, f"device {e.dev!r} key is not a P-256 point")
            pub = None
        if e.action == "add":
            if hist:
                self.problem("entries", e.i, f"device {e.dev!r} added twice")
            hist.append(_Key(e.key, pub, e.i))
            self.status[e.dev] = "active"
        elif active is None:
            self.problem("entries", e.i, f"{e.action} of device {e.dev!r}, which is not active")
        elif e.action == "rotate":
            active.until_entry = e.i
            hist.append(_Key(e.key, pub, e.i))
        else:  # revoke
            if e.key != active.key:
                self.problem("entries", e.i, f"revoke of {e.dev!r} names a key that is not its "
                                             "current one")
            active.until_entry = e.i
            self.status[e.dev] = "revoked"

    # 3 ---------------------------------------------------------------------------------------

    def _checkpoints(self, roots: list[bytes]) -> None:
        n = len(roots) - 1
        expect = 1
        count = 0
        # a mirror (gateway/tlog/mirror.py) holds the checkpoints it fetched, not one per size
        sparse = self.c.execute("SELECT 1 FROM meta WHERE key = 'mirror_of'").fetchone()
        for size, root, text in self.c.execute(
                "SELECT size, CAST(root AS BLOB), note FROM checkpoints ORDER BY size"):
            count += 1
            if size != expect and not (sparse and isinstance(size, int) and size > expect):
                self.problem("checkpoints", expect, f"row is missing (next row is size {size})")
                return
            expect = size + 1
            try:
                cp = note.verify_checkpoint(text, self.vkey)
            except AnchorError as err:
                self.problem("checkpoints", size, f"note does not verify: {err.what}")
                continue
            if cp.size != size:
                self.problem("checkpoints", size, f"note says size {cp.size}")
            elif size > n:
                self.problem("checkpoints", size, f"size is beyond the {n} entries")
            elif cp.root != roots[size]:
                self.problem("checkpoints", size, f"note root {cp.root.hex()} != ledger tree root "
                                                  f"{roots[size].hex()}")
            if bytes(root) != cp.root:
                self.problem("checkpoints", size, "root column differs from the signed note")
        self.result.checkpoints = count
        if expect - 1 != n:
            self.problem("checkpoints", n, f"the latest checkpoint has size {expect - 1}, the "
                                           f"ledger {n} entries")

    # 4 ---------------------------------------------------------------------------------------

    def _readings(self, pool: VerifierPool) -> None:
        total = self.c.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
        if self.progress is None:
            self.progress = Progress(total)
        self.progress.total = max(total, 1)
        sent = {dev: [(k.key, k.from_entry, k.until_entry) for k in hist]
                for dev, hist in self.history.items()}
        self._ctx = Context(0, sent, _prepare_history, _local_history(self.history))
        try:
            self._scan(pool)
        finally:
            self.progress.finish()

    def _scan(self, pool: VerifierPool) -> None:
        next_id = 0
        last: dict[str, tuple[int, bytes]] = {}  # dev -> (seq, digest) in id order
        self.deferred: list[tuple[str, int, bytes, int]] = []  # (dev, seq, prev, id)
        self.counts: dict[str, list[int]] = {}  # dev -> [readings, max seq]
        groups: list[list[BatchEntry]] = [[]]
        size = 0
        for b in self.batch_entries:
            groups[-1].append(b)
            size += b.n
            if size >= READ_CHUNK:
                groups.append([])
                size = 0
        # group k+1 is read and handed to the pool before group k is checked
        ahead: _Group | None = None
        for group in groups:
            if not group:
                continue
            nxt = self._start_group(pool, group, next_id)
            next_id = nxt.hi
            if ahead is not None:
                self._finish_group(ahead, last)
            ahead = nxt
        if ahead is not None:
            self._finish_group(ahead, last)
        extra = self.c.execute("SELECT MIN(id), COUNT(*) FROM readings WHERE id >= ?",
                               (next_id,)).fetchone()
        if extra[1]:
            self.problem("readings", extra[0], f"{extra[1]} row(s) beyond the last batch "
                                               f"(ids from {next_id} on belong to no entry)")
        more = self.c.execute("SELECT entry FROM batches WHERE entry NOT IN "
                              "(SELECT i FROM entries WHERE kind = 'batch') LIMIT 1").fetchone()
        if more:
            self.problem("batches", more[0], "row has no batch entry in the ledger")
        self._chains()

    def _start_group(self, pool: VerifierPool, group: Sequence[BatchEntry],
                     next_id: int) -> _Group:
        """Read a group of batches' readings and start their verification on the pool."""
        lo = next_id
        hi = lo + sum(b.n for b in group)
        rows = self.c.execute("SELECT id, dev, seq, batch, CAST(cose AS BLOB) FROM readings "
                              "WHERE id >= ? AND id < ? ORDER BY id", (lo, hi)).fetchall()
        brows = {r[0]: r for r in self.c.execute(
            "SELECT entry, first, n, CAST(root AS BLOB), CAST(nodes AS BLOB) FROM batches "
            "WHERE entry >= ? AND entry <= ?",
            (group[0].i, group[-1].i))}
        items: list[tuple[int, str, int, int, bytes, int]] = []
        pos = lo
        by_id = {r[0]: r for r in rows}
        for b in group:
            for k in range(b.n):
                r = by_id.get(pos + k)
                if r is None:
                    return _Group(group, lo, hi, [], brows, iter(()), (
                        pos + k, f"row is missing (batch entry {b.i} has {b.n} readings from "
                                 f"id {pos})"))
                items.append((r[0], r[1], r[2], r[3], bytes(r[4]), b.i))
            pos += b.n
        work = [(it[4], it[5]) for it in items]  # (COSE bytes, batch entry)
        return _Group(group, lo, hi, items, brows, pool.iter_chunks(_check_chunk, work, self._ctx))

    def _finish_group(self, g: _Group, last: dict[str, tuple[int, bytes]]) -> None:
        if g.missing is not None:
            self.problem("readings", g.missing[0], g.missing[1])
            return
        group, lo, items, brows, ahead = g.group, g.lo, g.items, g.brows, g.ahead
        # per reading, then per batch; the pool verifies ahead while this loop checks
        results: list[tuple[bytes, str | None, bytes, bytes, int, str]] = []
        pos = lo
        k = 0
        for b in group:
            while len(results) < k + b.n:
                results.extend(next(ahead))
            leaves: list[bytes] = []
            for _ in range(b.n):
                rid, dev, seq, batch, _cose, _entry = items[k]
                leaf, err, digest, prev, dseq, ddev = results[k]
                k += 1
                leaves.append(leaf)
                if err is not None:
                    self.problem("readings", rid, err)
                    continue
                if ddev != dev or dseq != seq:
                    self.problem("readings", rid, f"columns say {dev!r} seq {seq}, the message "
                                                  f"{ddev!r} seq {dseq}")
                if batch != b.i:
                    self.problem("readings", rid, f"batch column {batch} != entry {b.i}")
                cnt = self.counts.setdefault(ddev, [0, -1])
                cnt[0] += 1
                cnt[1] = max(cnt[1], dseq)
                before = last.get(ddev)
                if before is not None and before[0] + 1 == dseq:
                    if prev != before[1] and (ddev, dseq) not in self.chain_breaks:
                        self.problem("readings", rid, f"{ddev!r} seq {dseq}: prev is not the "
                                     f"hash of seq {dseq - 1} and no chain_break is recorded")
                elif dseq == 0:
                    if prev != ZERO_HASH and (ddev, 0) not in self.chain_breaks:
                        self.problem("readings", rid, f"{ddev!r} seq 0: prev is not 32 zero "
                                     "bytes and no chain_break is recorded")
                else:
                    self.deferred.append((ddev, dseq, prev, rid))
                if before is None or dseq > before[0]:
                    last[ddev] = (dseq, digest)
            brow = brows.get(b.i)
            nodes = batch_nodes(leaves)
            root = merkle.root(nodes)
            if root != b.root:
                self.problem("entries", b.i, f"batch root {b.root.hex()} != root recomputed "
                                             f"from readings {pos}..{pos + b.n - 1} {root.hex()}")
            if brow is None:
                self.problem("batches", b.i, "row is missing")
            else:
                if brow[1] != pos or brow[2] != b.n:
                    self.problem("batches", b.i, f"first/n columns ({brow[1]}, {brow[2]}) != "
                                                 f"({pos}, {b.n}) from the ledger")
                if bytes(brow[3]) != b.root:
                    self.problem("batches", b.i, "root column differs from the ledger entry")
                if bytes(brow[4]) != b"".join(nodes):
                    self.problem("batches", b.i, f"nodes column differs from the {GROUP}-leaf "
                                                 "group roots recomputed from the readings")
            pos += b.n
            self.result.readings += b.n
        assert self.progress is not None
        self.progress.update(self.result.readings)

    # 5 ---------------------------------------------------------------------------------------

    def _chains(self) -> None:
        for dev, seq, prev, rid in self.deferred:
            rows = self.c.execute("SELECT seq, CAST(cose AS BLOB) FROM readings WHERE dev = ? "
                                  "AND seq IN (?, ?)",
                                  (dev, seq - 1, seq)).fetchall()
            mine = [r for r in rows if r[0] == seq]
            if len(mine) != 1:
                self.problem("readings", rid, f"{dev!r} seq {seq} is stored {len(mine)} times")
                continue
            before = [r for r in rows if r[0] == seq - 1]
            if len(before) > 1:
                self.problem("readings", rid, f"{dev!r} seq {seq - 1} is stored "
                                              f"{len(before)} times")
            elif before and prev != hashlib.sha256(before[0][1]).digest() \
                    and (dev, seq) not in self.chain_breaks:
                self.problem("readings", rid, f"{dev!r} seq {seq}: prev is not the hash of seq "
                                              f"{seq - 1} and no chain_break is recorded")

    # 6 ---------------------------------------------------------------------------------------

    def _devices(self) -> None:
        rows = {r[0]: r for r in self.c.execute(
            "SELECT id, CAST(key AS BLOB), status, entry, readings, last_seq, upto FROM devices")}
        uptos = self._watermarks()
        for dev, hist in self.history.items():
            r = rows.pop(dev, None)
            if r is None:
                self.problem("devices", dev, "row is missing (the ledger registers this device)")
                continue
            cur = hist[-1]
            if bytes(r[1]) != cur.key:
                self.problem("devices", dev, "key differs from the ledger's device entries")
            if r[2] != self.status.get(dev):
                self.problem("devices", dev, f"status {r[2]!r} != {self.status.get(dev)!r} from "
                                             "the ledger")
            if r[3] != self.last_entry.get(dev):
                self.problem("devices", dev, f"entry {r[3]!r} != {self.last_entry.get(dev)}, its "
                                             "latest device entry in the ledger")
            n, top = self.counts.get(dev, [0, -1])
            if r[4] != n or (r[5] if r[5] is not None else -1) != top:
                self.problem("devices", dev, f"readings/last_seq ({r[4]}, {r[5]}) != ({n}, "
                                             f"{top if top >= 0 else None}) from the readings")
            if r[6] != uptos.get(dev, -1):
                self.problem("devices", dev, f"upto {r[6]} != {uptos.get(dev, -1)} from the "
                                             "readings")
        for dev in rows:
            self.problem("devices", dev, "row is not backed by any device entry in the ledger")
        for dev in self.counts:
            if dev not in self.history:
                self.problem("readings", dev, "readings of a device the ledger never registered")
        keys = sorted((d, bytes(k), f, u) for d, k, f, u in self.c.execute(
            "SELECT dev, CAST(key AS BLOB), from_entry, until_entry FROM device_keys"))
        want = sorted((d, k.key, k.from_entry, k.until_entry)
                      for d, hist in self.history.items() for k in hist)
        if keys != want:
            diff = [(a[0], a[2]) for a, b in zip(keys, want, strict=False) if a != b]
            longer = keys if len(keys) > len(want) else want
            dev, start = diff[0] if diff else (longer[min(len(keys), len(want))][0],
                                               longer[min(len(keys), len(want))][2])
            self.problem("device_keys", f"({dev}, {start})",
                         "differs from the key history in the ledger's device entries")
        self.result.devices = len(self.history)

    def _watermarks(self) -> dict[str, int]:
        out: dict[str, int] = {}
        first_gap = {d: int(s) for d, s in self.c.execute(
            "SELECT dev, MIN(seq) FROM (SELECT dev, seq, LEAD(seq) OVER (PARTITION BY dev "
            "ORDER BY seq) AS nxt FROM readings) AS t WHERE nxt IS NULL OR nxt > seq + 1 "
            "GROUP BY dev")}
        starts = {d: int(s) for d, s in self.c.execute(
            "SELECT dev, MIN(seq) FROM readings GROUP BY dev")}
        for dev, lo in starts.items():
            out[dev] = first_gap[dev] if lo == 0 else -1
        return out


def audit(store: Store, vkey: str, *, workers: int = 2, progress: Progress | None = None,
          max_problems: int = MAX_PROBLEMS) -> AuditResult:
    """Run every check; returns the problems found (empty when the ledger holds)."""
    return Auditor(store, vkey, workers=workers, progress=progress,
                   max_problems=max_problems).run()


ProgressFactory = Callable[[int], Progress]


_History = dict[str, list[tuple[PublicKey | None, int, int | None]]]


def _local_history(history: dict[str, list[_Key]]) -> _History:
    return {dev: [(k.pub, k.from_entry, k.until_entry) for k in hist]
            for dev, hist in history.items()}


def _prepare_history(sent: dict[str, list[tuple[bytes, int, int | None]]]) -> _History:
    """In a worker: the key history as sent (key bytes) -> key objects (None: not a point)."""
    out: _History = {}
    for dev, hist in sent.items():
        keys: list[tuple[PublicKey | None, int, int | None]] = []
        for kb, start, until in hist:
            try:
                pub: PublicKey | None = load_public_key(kb)
            except AnchorError:
                pub = None
            keys.append((pub, start, until))
        out[dev] = keys
    return out


def _key_at(history: _History, dev: str, entry: int) -> PublicKey | None | str:
    for pub, start, until in history.get(dev, ()):
        if start < entry and (until is None or entry < until):
            return pub
    return "no key was valid for this device at that entry"


def _check_chunk(history: _History, chunk: Sequence[tuple[bytes, int]]
                 ) -> list[tuple[bytes, str | None, bytes, bytes, int, str]]:
    """Worker: (leaf hash, problem or None, digest, prev, seq, dev) per (COSE bytes, entry)."""
    out: list[tuple[bytes, str | None, bytes, bytes, int, str]] = []
    for cose, entry in chunk:
        leaf = merkle.leaf_hash(cose)
        try:
            d = decode(cose, max(len(cose), 1))
        except Rejection as r:
            out.append((leaf, f"message does not decode ({r.reason}: {r.detail})",
                        b"", b"", -1, ""))
            continue
        key = _key_at(history, d.dev, entry)
        if key is None or isinstance(key, str):
            out.append((leaf, f"{d.dev!r} seq {d.seq}: "
                        f"{key or 'its key is not a P-256 point'} (batch entry {entry})",
                        b"", b"", -1, ""))
            continue
        reason = check_signature(key, d.to_be_signed, d.signature)
        if reason:
            out.append((leaf, f"{d.dev!r} seq {d.seq}: signature check failed ({reason}) "
                        f"against the key valid at entry {entry}", b"", b"", -1, ""))
            continue
        out.append((leaf, None, d.digest, d.prev, d.seq, d.dev))
    return out


# The reading check of step 4, for the mirror (gateway/tlog/mirror.py), which re-verifies what
# it fetches exactly as the audit verifies what is stored: `check_readings(history, chunk)` on
# the verifier pool, with `readings_context(key, history)` as its Context.
check_readings = _check_chunk


def readings_context(key: object, history: dict[str, list[tuple[bytes, int, int | None]]]
                     ) -> Context[_History]:
    """The pool Context for `check_readings`: the device key history (dev -> [(SEC1 key,
    from entry, until entry or None)]) under the cache key `key` (a new one per change)."""
    local = _prepare_history(history)
    return Context(key, history, _prepare_history, local)
