"""decode -> verify -> dedupe -> batch -> commit -> acks: shared by `ingest` and `run`.

API (the MQTT service and `ingest` use exactly this)::

    p = Pipeline(store, batch_max=4096, max_message=2048, workers=2, signer=None)
    outcomes = p.submit([raw_bytes, (raw_bytes, topic_device_id_or_None), ...])
    p.pending()            # readings in the open batch
    result = p.commit()    # CommitResult | None
    p.close()              # stops the verifier processes (also a context manager)

    sub = p.start(messages)   # submit in two halves: verification starts in the pool ...
    p.commit()                # ... the previous batch can be committed meanwhile ...
    outcomes = p.finish(sub)  # ... then classify (finish submissions in start order)
    feed(p, chunks, on_outcomes, on_commit)   # that loop, committing every batch_max readings

`submit` never raises for bad input: every message gets an `Outcome(status, reason, dev, seq)`
with status "accepted" (joined the open batch), "duplicate" (already anchored or already in the
open batch with the same bytes; it will be acknowledged again) or "rejected" (reason: a name
from `REASONS`). It can raise `StorageError` when the database cannot be read (a damaged
file): the caller should hold those messages and submit them again later, which is safe, since
any that were already classified come back as duplicates of the open batch.
Passing `(bytes, topic_dev)` lets the service refuse a message published on another device's
topic (`topic_mismatch`). `signer` defaults to the key in the data directory.

`commit()` closes the open batch. ONE SQLite transaction stores the readings (split into
batches of at most `batch_max`, one ledger entry each), the batches, their entries, a signed
checkpoint after each entry, the security events and the rejection counters. It returns None
when nothing happened since the last commit, else a `CommitResult` whose `acks` has an
`Ack(upto, seqs, entry)` for every device with accepted or duplicate readings since the last commit:
``upto`` = the highest seq such that every seq <= it is anchored (-1 when seq 0 is not),
``seqs`` = the other seqs acknowledged now, above upto, and ``entry`` = the index of the newest
ledger entry, which contains (or follows) every acknowledged reading. Nothing is acknowledged
before the commit. When the commit fails it raises `StorageError` (disk full, read-only, ...),
acknowledges nothing and keeps the open batch, so a later `commit()` retries it.

Design choices:
* Verification runs on a pool of worker processes (`gateway.ingest.verifier`, which says why not
  threads): each task decodes, verifies and hashes a chunk of messages and sends back, per
  message, a rejection reason or (dev, seq, prev, SHA-256, leaf hash). The device keys go to
  the workers once per registry change (`Context`).
* Device state is cached: per device the highest seq, the hash of that reading (for the prev
  check of the next one) and the watermark ``upto`` (stored in `devices.upto`). A new seq above
  the device's highest needs no database lookup; a late one (below it) is looked up in the
  database: absent -> accepted (it fills a gap), same bytes -> duplicate, other bytes ->
  equivocation (rejected, and stored as a security event; the first message is kept).
* A device publishes a reading again when its ack is late (an overloaded gateway: the copies
  arrive while it is still behind). Once a finished submission was at least 1/16 duplicates,
  `start` looks up the messages that name a seq at or below their device's highest in the store
  (one statement per 400) and answers those that are byte for byte a stored reading of an
  active device as duplicates without verifying them again: their bytes were verified when
  stored. The others, and all messages while duplicates are rare, go to the verifiers.
* ``prev`` is checked against the stored predecessor (seq-1) when there is one; a late reading
  is also checked as the predecessor of a stored seq+1. A mismatch is a "chain_break" event: the
  reading is still anchored (its signature is valid). seq 0 must have prev = 32 zero bytes.
* Another process (a `device add`, an `ingest` while `run` is up) may commit to the same
  database: every submit checks SQLite's data_version and reloads the registry and the device
  state when it changed; the commit re-checks the open batch against the database inside its
  transaction in that case.
* Several processes appending at once (PostgreSQL, `Store.concurrent`: several `run --shared`
  gateways): the commit's transaction holds the store's sequencer lock, and inside it the open
  batch is reconciled with what the others stored meanwhile (`_reconcile`: one query for the
  batch's (dev, seq) and their neighbours): a reading stored meanwhile is dropped (same bytes:
  acknowledged as a duplicate; other bytes: an equivocation), and the prev checks are made
  again against the stored neighbours. The registry is reloaded when its version changes.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

from gateway.errors import StorageError
from gateway.ingest.verifier import Context, VerifierPool
from gateway.ledger import merkle, note
from gateway.ledger.batch import GROUP, batch_nodes, make_batch_entry
from gateway.ledger.entry import RecordEntry, decode_entry
from gateway.ledger.merkle import leaf_hash
from gateway.rules.runtime import RuleRuntime
from gateway.storage.store import Store, now_ms
from gateway.wire.cose import (
    DECODE_REASONS,
    MAX_MESSAGE,
    Rejection,
    decode,
    fields,
    fields_and_values,
    identity,
)
from gateway.wire.es256 import PublicKey, check_signature, load_public_key

REASONS: tuple[str, ...] = DECODE_REASONS + (
    "unknown_device",
    "revoked_device",
    "high_s",
    "bad_signature",
    "topic_mismatch",
    "equivocation",
)
ZERO_HASH = bytes(32)
DAY_MS = 86_400_000  # device_days counts per UTC day: day = commit time (ms) // DAY_MS
sha256 = hashlib.sha256
DEVICE_CHUNK = 500  # devices per statement (3 parameters each: below SQLite's 999 of old)
WALK = 512  # seqs per device per step of the watermark walk
COPIES_SHARE = 16  # look for stored copies once 1/16 of a submission were duplicates

Message = bytes | bytearray | memoryview | tuple[bytes, str | None]
_Checked = tuple[str, int, bytes, bytes, bytes]  # dev, seq, prev, SHA-256, RFC 6962 leaf hash
_Values = tuple["int | None", dict[str, "int | float"]]  # a reading's ts and data
_CheckedValues = tuple[str, int, bytes, bytes, bytes, _Values]  # _Checked, then (ts, data)
_Refused = tuple[str, str]  # (rejection reason, the device the message names)
_Fact = tuple[bytes, bytes | None]  # a stored reading's SHA-256, and its prev when needed


@dataclass(slots=True)  # not frozen: one per message, and frozen ones cost 4x to construct
class Outcome:
    status: str  # "accepted" | "duplicate" | "rejected"
    reason: str | None = None
    dev: str | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    upto: int
    seqs: list[int]
    entry: int


@dataclass(frozen=True, slots=True)
class CommitResult:
    entry: int | None  # index of the last entry written by this commit (None: no new entry)
    root: bytes | None  # root of that batch
    readings: int  # readings anchored by this commit
    entries: list[int]  # the batch entries written
    size: int  # ledger size after the commit
    checkpoint: str | None  # the latest signed checkpoint
    acks: dict[str, Ack] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)  # refusals stored, by reason
    actions: list[int] = field(default_factory=list)  # action entries written (rules fired)


@dataclass(frozen=True, slots=True)
class Submission:
    """Messages handed to the verifier pool by `Pipeline.start`, not yet classified."""

    raws: list[bytes]  # those handed to the pool
    topics: list[str | None]  # the device named by each one's topic (None: no topic)
    parts: Iterator[list[_Checked | _CheckedValues | _Refused | str]]
    # position among all the messages -> (dev, seq) of the stored reading it is byte for byte
    # (not handed to the pool: see `Pipeline._stored_copies`)
    copies: dict[int, tuple[str, int]] = field(default_factory=dict)


@dataclass(slots=True)
class _Reading:
    """An accepted reading in the open batch."""

    raw: bytes
    dev: str
    seq: int
    prev: bytes
    digest: bytes
    values: _Values | None = None  # (ts, data) when the verifier sent them (rules applied)


@dataclass(slots=True)
class _Dev:
    last_seq: int  # -1: none stored
    last_hash: bytes | None  # digest of the reading with last_seq (None: unknown, look it up)
    upto: int


@dataclass(frozen=True, slots=True)
class _Event:
    kind: str
    dev: str
    seq: int
    cose: bytes | None
    detail: str


_key_objects: dict[bytes, PublicKey] = {}  # per process: SEC1 bytes -> key (few thousand)


class _Keys:
    """The registry for verification: dev -> (key object, status). A key object (about 2 KB)
    is made the first time a device's reading is checked, not for the whole registry at once:
    the service's own process checks only small chunks and a worker dying, so at 5,000 devices it
    keeps 10 MB less, and a registry change costs no key loading until readings come. Objects are
    shared between versions of the registry through `_key_objects`."""

    __slots__ = ("_registry", "_made")

    def __init__(self, registry: dict[str, tuple[bytes, str]]) -> None:
        self._registry = registry  # dev -> (SEC1 key bytes, status)
        self._made: dict[str, tuple[PublicKey, str]] = {}

    def get(self, dev: str) -> tuple[PublicKey, str] | None:
        entry = self._made.get(dev)
        if entry is None:
            sent = self._registry.get(dev)
            if sent is None:
                return None
            kb, status = sent
            key = _key_objects.get(kb)
            if key is None:
                key = _key_objects[kb] = load_public_key(kb)
            entry = self._made[dev] = (key, status)
        return entry


def prepare_keys(value: tuple[int, dict[str, tuple[bytes, str]], bool]
                 ) -> tuple[int, _Keys, bool]:
    """In a worker: the registry as sent ((message size limit, {dev: (key bytes, status)},
    whether to send each reading's values)) -> the context `check_chunk` takes (the lazy key
    table above)."""
    limit, registry, values = value
    if len(_key_objects) > 4 * len(registry) + 1024:  # forget keys of a long-gone registry
        _key_objects.clear()
    return limit, _Keys(registry), values


def check_chunk(ctx: tuple[int, _Keys, bool], items: Sequence[tuple[bytes, str | None]]
                ) -> list[_Checked | _CheckedValues | _Refused | str]:
    """A verifier process's work on one chunk (the pool's task; a bench calls it directly):
    decode and verify. Per item: (dev, seq, prev, digest, leaf hash), and then (ts, data) if
    the context asks for values (the rules read them: read here, the commit does not decode
    the payload again), or the rejection reason. The hashes are made here so that the serial
    part of a commit is short."""
    max_message, keys, values = ctx
    out: list[_Checked | _CheckedValues | _Refused | str] = []
    append = out.append
    names: dict[str, str] = {}  # one str object per device: pickled once per chunk
    for raw, topic in items:
        vals: _Values | None = None
        if len(raw) > max_message:
            f = None
        elif values:
            fv = fields_and_values(raw)
            f = None if fv is None else fv[:5]
            vals = None if fv is None else (fv[5], fv[6])
        else:
            f = fields(raw)
        if f is None:  # not the firmware's exact layout: the strict decoder decides
            try:
                d = decode(raw, max_message)
            except Rejection as r:
                append(r.reason)
                continue
            except Exception:  # the decoder raises only Rejection; keep the promise regardless
                append("cbor_malformed")
                continue
            f = (d.dev, d.seq, d.prev, d.to_be_signed, d.signature)
            vals = (d.ts, d.data)
        dev, seq, prev, tbs, sig = f
        if topic is not None and topic != dev:
            append(("topic_mismatch", dev))
            continue
        entry = keys.get(dev)
        if entry is None:
            append(("unknown_device", dev))
            continue
        if entry[1] != "active":
            append(("revoked_device", dev))
            continue
        try:
            reason = check_signature(entry[0], tbs, sig)
        except Exception:
            reason = "bad_signature"
        if reason:
            append((reason, dev))
        elif values:
            append((names.setdefault(dev, dev), seq, prev, sha256(raw).digest(), leaf_hash(raw),
                    cast(_Values, vals)))  # set on both paths above
        else:
            append((names.setdefault(dev, dev), seq, prev, sha256(raw).digest(), leaf_hash(raw)))
    return out


class Pipeline:
    """See the module docstring."""

    def __init__(self, store: Store, *, batch_max: int = 4096, max_message: int = MAX_MESSAGE,
                 workers: int = 2, signer: Any = None, processes: bool = True,
                 owns_store: bool = False) -> None:
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        # group roots can be made during submit when batches split on group boundaries
        self._aligned = batch_max % GROUP == 0
        self.store = store
        self._concurrent = store.concurrent  # other processes append too (see _reconcile)
        self._registry_seen = -1  # with concurrent writers: the registry version loaded
        self._owns_store = owns_store  # close() closes the store too
        self.batch_max = batch_max
        self.max_message = max_message
        self.signer = signer if signer is not None else store.load_signer()
        self.pool = VerifierPool(workers, processes=processes)
        self._generation = itertools.count()
        self._ctx: Context[tuple[int, _Keys, bool]] | None = None
        self._keys = _Keys({})
        self._sent: dict[str, tuple[bytes, str]] = {}  # the registry the verifiers hold
        self._values = False  # the verifiers send each reading's (ts, data): rules read them
        self._devs: dict[str, _Dev] = {}
        self._batch: list[_Reading] = []
        self._leaves: list[bytes] = []  # leaf hashes of the open batch, in order
        self._groups: list[bytes] = []  # roots of its complete GROUP-leaf groups, per batch part
        self._in_batch: dict[tuple[str, int], _Reading] = {}  # (dev, seq) -> open-batch reading
        self._acked: dict[str, set[int]] = {}
        self._rejected: Counter[str] = Counter()
        self._rejected_dev: Counter[str] = Counter()  # by the topic's (or reading's) device
        self._events: list[_Event] = []
        self.totals: Counter[str] = Counter()  # accepted / duplicate / rejected since start
        # the last finished submission was at least 1/COPIES_SHARE duplicates: look for
        # stored copies before verifying (`_stored_copies`)
        self._copies_likely = False
        self.rules = RuleRuntime(store, self.signer)  # the applied rule set (docs/rules.md)
        self._refused: list[tuple[str, str]] = []  # (dev, reason) of this batch's refusals
        # of the last commit on a PostgreSQL store: (seconds waited for the sequencer lock,
        # seconds held); (0, 0) on SQLite
        self.sequencer: tuple[float, float] = (0.0, 0.0)
        # concurrent writers: (readings.id from which on rows were committed after the
        # pre-check, the stored COSE bytes the pre-check found); see `_reconcile`
        self._pre: tuple[int, dict[tuple[str, int], _Fact]] | None = None
        self.reload()

    # --- state ---------------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the registry and forget cached device state (after outside changes)."""
        if self._concurrent:  # read first: a change after it is seen next time
            self._registry_seen = self.store.registry_version()
        self._sent = {row.id: (bytes(row.key), row.status) for row in self.store.devices()}
        self._keys = prepare_keys((self.max_message, self._sent, False))[1]
        self._values = self.store.latest_rules() is not None  # the first commit makes it exact
        self._new_context()
        self._devs = {}
        self.rules.reload()

    def _new_context(self) -> None:
        """The verifiers' context: the registry and whether to send values (a new key: it is
        sent to each worker again)."""
        self._ctx = Context(next(self._generation), (self.max_message, self._sent, self._values),
                            prepare_keys, (self.max_message, self._keys, self._values))

    def _changed(self) -> bool:
        """Reload? With concurrent writers (other gateways commit all the time) only when the
        registry changed, since `_reconcile` deals with their readings; else when another
        process committed anything."""
        if self._concurrent:
            return self.store.registry_version() != self._registry_seen
        return self.store.changed_elsewhere()

    def _dev(self, dev: str) -> _Dev:
        st = self._devs.get(dev)
        if st is None:
            row = self.store.device(dev)
            if row is None or row.last_seq is None:
                st = _Dev(-1, None, -1 if row is None else row.upto)
            else:
                st = _Dev(row.last_seq, None, row.upto)
            self._devs[dev] = st
        return st

    def _digest_of(self, dev: str, seq: int) -> bytes | None:
        """Digest of the reading (dev, seq) if it is stored or in the open batch."""
        r = self._in_batch.get((dev, seq))
        if r is not None:
            return r.digest
        st = self._dev(dev)
        if seq == st.last_seq and st.last_hash is not None:
            return st.last_hash
        cose = self.store.stored_cose(dev, seq)
        if cose is None:
            return None
        h = hashlib.sha256(cose).digest()
        if seq == st.last_seq:
            st.last_hash = h
        return h

    def pending(self) -> int:
        return len(self._batch)

    # --- submit --------------------------------------------------------------------------------

    def submit(self, messages: Sequence[Message]) -> list[Outcome]:
        """Decode, verify and classify `messages`; see the module docstring."""
        return self.finish(self.start(messages))

    def start(self, messages: Sequence[Message]) -> Submission:
        """The first half of `submit`: hand the messages to the verifier pool and return at
        once. `finish(submission)` classifies them. Between the two the caller may `commit()`
        the previous batch, so the SQLite writes overlap the verification (see `feed`).
        Submissions must be finished in the order they were started."""
        if self._changed():
            self.reload()
        items: list[tuple[bytes, str | None]] = []
        for m in messages:
            raw, topic = m if isinstance(m, tuple) else (m, None)
            items.append((raw if type(raw) is bytes else bytes(raw), topic))
        copies = self._stored_copies(items) if self._copies_likely else {}
        if copies:
            items = [x for i, x in enumerate(items) if i not in copies]
        return Submission([x[0] for x in items], [x[1] for x in items],
                          self.pool.iter_chunks(check_chunk, items, self._ctx), copies)

    def _stored_copies(self, items: list[tuple[bytes, str | None]]
                       ) -> dict[int, tuple[str, int]]:
        """The messages that are byte for byte a stored reading of an active device, published
        on its own topic (or none) and within the size limit, by position: (dev, seq). A device
        publishes a reading again when its ack is late; the gateway under load would verify
        each copy again before finding it a duplicate. These bytes were verified when stored,
        so they are answered "duplicate" without the pool (what verifying would give: only a
        registry change, which reloads first, could change it). Any doubt: verify."""
        want: dict[int, tuple[str, int]] = {}
        for i, (raw, topic) in enumerate(items):
            if len(raw) > self.max_message:
                continue
            ident = identity(raw)
            if ident is None or (topic is not None and topic != ident[0]):
                continue
            st = self._devs.get(ident[0])
            sent = self._sent.get(ident[0])
            if st is not None and ident[1] <= st.last_seq and sent is not None \
                    and sent[1] == "active":
                want[i] = ident
        if not want:
            return {}
        try:
            stored = self.store.stored_many(set(want.values()))
        except StorageError:
            return {}  # the pool and the classification decide, as without this
        return {i: k for i, k in want.items() if stored.get(k) == items[i][0]}

    def finish(self, submission: Submission) -> list[Outcome]:
        """The second half of `submit`: classify the verified messages, in order."""
        out: list[Outcome] = []
        append = out.append
        raws = iter(submission.raws)
        topics = iter(submission.topics)
        for part in submission.parts:
            for res, raw in zip(part, raws, strict=False):  # raws is one iterator for all
                topic = next(topics)
                if type(res) is str:
                    self._rejected[res] += 1
                    if topic:
                        self._rejected_dev[topic] += 1
                    append(Outcome("rejected", res))
                elif len(res) == 2:  # refused, and the message names its device
                    reason, rdev = cast(_Refused, res)
                    self._rejected[reason] += 1
                    self._refused.append((rdev, reason))
                    self._rejected_dev[topic or rdev] += 1
                    append(Outcome("rejected", reason, rdev))
                else:
                    append(self._classify(raw, *res))
        if submission.copies:
            out = self._merge_copies(out, submission.copies)
        counts = Counter(o.status for o in out)
        self.totals.update(counts)
        self._copies_likely = counts["duplicate"] * COPIES_SHARE >= len(out) > 0
        return out

    def _merge_copies(self, verified: list[Outcome], copies: dict[int, tuple[str, int]]
                      ) -> list[Outcome]:
        """The outcomes in message order: the stored copies' ("duplicate", acknowledged
        again, as `_classify` does) among those of the verified messages."""
        out: list[Outcome] = []
        rest = iter(verified)
        for i in range(len(verified) + len(copies)):
            known = copies.get(i)
            if known is None:
                out.append(next(rest))
            else:
                self._ack(*known)
                out.append(Outcome("duplicate", None, *known))
        return out

    def _classify(self, raw: bytes, dev: str, seq: int, prev: bytes, digest: bytes,
                  leaf: bytes, values: _Values | None = None) -> Outcome:
        st = self._devs.get(dev) or self._dev(dev)
        key = (dev, seq)
        same = self._in_batch.get(key)
        prior = same.digest if same is not None else None
        if prior is None and seq <= st.last_seq:
            prior = self._digest_of(dev, seq)
        if prior is not None:
            if prior == digest:
                self._ack(dev, seq)
                return Outcome("duplicate", None, dev, seq)
            self._rejected["equivocation"] += 1
            self._refused.append((dev, "equivocation"))
            self._rejected_dev[dev] += 1
            self._events.append(_Event("equivocation", dev, seq, raw,
                                       f"stored message has sha256 {prior.hex()}, "
                                       f"this one {digest.hex()}"))
            return Outcome("rejected", "equivocation", dev, seq)
        # accepted: check the chain in both directions (with concurrent writers, the commit's
        # reconciliation does it, against what is stored then: no lookups here)
        if not self._concurrent:
            if seq == 0:
                expected: bytes | None = ZERO_HASH
            elif seq - 1 == st.last_seq and st.last_hash is not None:
                expected = st.last_hash
            else:
                expected = self._digest_of(dev, seq - 1)
            if expected is not None and prev != expected:
                self._events.append(_Event("chain_break", dev, seq, None,
                                           f"prev {prev.hex()} != sha256 of seq {seq - 1} "
                                           f"{expected.hex()}"))
            if seq < st.last_seq:
                self._check_successor(dev, seq, digest)
        self._batch.append(r := _Reading(raw, dev, seq, prev, digest, values))
        self._leaves.append(leaf)
        self._in_batch[key] = r
        k = len(self._leaves)
        if k % GROUP == 0 and self._aligned:
            # a complete group: its root now, while the pool is still verifying
            self._groups.append(merkle.root(self._leaves[k - GROUP:k]))
        self._ack(dev, seq)
        if seq > st.last_seq:
            st.last_seq = seq
            st.last_hash = digest
        return Outcome("accepted", None, dev, seq)

    def _ack(self, dev: str, seq: int) -> None:
        acked = self._acked.get(dev)
        if acked is None:
            self._acked[dev] = {seq}
        else:
            acked.add(seq)

    def _check_successor(self, dev: str, seq: int, digest: bytes) -> None:
        nxt = self._next_prev(dev, seq + 1)
        if nxt is not None and nxt != digest:
            self._events.append(_Event("chain_break", dev, seq + 1, None,
                                       f"prev {nxt.hex()} != sha256 of late seq {seq} "
                                       f"{digest.hex()}"))

    def _next_prev(self, dev: str, seq: int) -> bytes | None:
        """The prev field of reading (dev, seq), if stored or in the open batch."""
        r = self._in_batch.get((dev, seq))
        if r is not None:
            return r.prev
        cose = self.store.stored_cose(dev, seq)
        if cose is None:
            return None
        try:
            return decode(cose, max(self.max_message, len(cose))).prev
        except Rejection:
            return None

    # --- commit --------------------------------------------------------------------------------

    def commit(self) -> CommitResult | None:
        if not (self._batch or self._acked or self._rejected or self._events):
            return None
        try:
            self._pre = self._precheck() if self.store.concurrent and self._batch else None
            result = self._commit()
        except StorageError:
            # nothing was written: keep the open batch for a retry, but forget cached state
            self._devs = {}
            raise
        self._batch = []
        self._leaves = []
        self._groups = []
        self._in_batch = {}
        self._acked = {}
        self._rejected = Counter()
        self._refused = []
        self._rejected_dev = Counter()
        self._events = []
        return result

    def _commit(self) -> CommitResult:
        store = self.store
        rules = self.rules
        try:
            with store.write() as c:
                if self._changed():
                    self._recheck_batch(c)
                if store.concurrent:
                    self._reconcile(c)
                rules.begin(c)
                if rules.reads_values != self._values:  # a rule set applied or gone
                    self._values = rules.reads_values
                    self._new_context()
                result = self._write(c, rules)
        except BaseException:
            rules.rolled_back()
            raise
        rules.committed()
        # the transaction is committed: now the cached watermarks may move
        self.sequencer = (getattr(store.conn, "lock_wait_s", 0.0),
                          getattr(store.conn, "hold_s", 0.0))
        for dev, ack in result.acks.items():
            self._dev(dev).upto = ack.upto
        return replace(result, actions=rules.new_actions) if rules.new_actions else result

    def _write(self, c: Any, rules: RuleRuntime) -> CommitResult:
        """The commit's writes, inside its transaction (see commit)."""
        store = self.store
        entries: list[int] = []
        root: bytes | None = None
        checkpoint: str | None = None
        head = store.head(c)
        t = now_ms()
        batch = self._batch
        row = c.execute("SELECT MAX(id) FROM readings").fetchone()
        next_id = 0 if row[0] is None else row[0] + 1
        for start in range(0, len(batch), self.batch_max):
            part = batch[start:start + self.batch_max]
            leaves = self._leaves[start:start + len(part)]
            nodes = self._nodes(start, leaves)
            root = merkle.root(nodes)
            body = make_batch_entry(head.size, head.last_hash, root, len(part), t)
            e = store.append_entry(c, head, "batch", body)
            head = type(head)(e.index + 1, e.hash, head.tree)
            c.execute("INSERT INTO batches (entry, first, n, root, nodes) VALUES (?,?,?,?,?)",
                      (e.index, next_id, len(part), root, b"".join(nodes)))
            c.executemany(
                "INSERT INTO readings (id, dev, seq, batch, cose) VALUES (?, ?, ?, ?, ?)",
                [(next_id + k, d.dev, d.seq, e.index, d.raw) for k, d in enumerate(part)])
            next_id += len(part)
            entries.append(e.index)
            checkpoint = store.checkpoint(c, head.tree, self.signer)
            rules.last_batch = e.index
            if rules.active:
                size0 = head.size
                head = rules.on_batch(c, head, e.index, [
                    (d.raw, d.dev, d.seq, leaf, d.values)
                    for d, leaf in zip(part, leaves, strict=True)], t)
                if head.size != size0:
                    checkpoint = None  # action entries followed, each with its checkpoint
        size0 = head.size
        head = rules.on_rejections(c, head, self._refused, t)
        if head.size != size0:
            checkpoint = None
        rules.save(c)
        acks = self._update_devices(c, head.size - 1)
        if self._events:
            c.executemany(
                "INSERT INTO events (kind, dev, seq, cose, detail, t) VALUES (?,?,?,?,?,?)",
                [(ev.kind, ev.dev, ev.seq, ev.cose, ev.detail, t) for ev in self._events])
        if self._rejected:
            c.executemany(
                "INSERT INTO rejected (reason, n) VALUES (?, ?) "
                "ON CONFLICT (reason) DO UPDATE SET n = rejected.n + excluded.n",
                sorted(self._rejected.items()))
        self._count_days(c, t)
        if checkpoint is None:
            cp = c.execute("SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
            checkpoint = cp[0] if cp else None
        size = head.size
        return CommitResult(entries[-1] if entries else None, root, len(self._batch), entries,
                            size, checkpoint, acks, rejected=dict(self._rejected))

    def _nodes(self, start: int, leaves: list[bytes]) -> list[bytes]:
        """Group roots of the batch part starting at `start`: the ones made during submit, plus
        the partial last group."""
        if not self._aligned:
            return batch_nodes(leaves)
        g0 = start // GROUP
        full = len(leaves) // GROUP
        nodes = self._groups[g0:g0 + full]
        if len(nodes) != full:  # not made during submit (after a recheck): make them now
            return batch_nodes(leaves)
        if len(leaves) % GROUP:
            nodes.append(merkle.root(leaves[full * GROUP:]))
        return nodes

    def _count_days(self, c: Any, t: int) -> None:
        """device_days (the console's devices table): per device and UTC day of this commit,
        its readings, the time of its last commit with readings, and the messages refused on
        its topic (registered devices only: made-up topics add no rows). One executemany
        each, whatever the batch size."""
        day = t // DAY_MS
        per_dev = Counter(d.dev for d in self._batch)
        if per_dev:
            c.executemany(
                "INSERT INTO device_days (dev, day, readings, rejected, last_t) "
                "VALUES (?, ?, ?, 0, ?) ON CONFLICT (dev, day) DO UPDATE SET "
                "readings = device_days.readings + excluded.readings, last_t = excluded.last_t",
                [(dev, day, n, t) for dev, n in per_dev.items()])
        if self._rejected_dev:
            c.executemany(
                "INSERT INTO device_days (dev, day, readings, rejected) "
                "SELECT ?, ?, 0, ? WHERE EXISTS (SELECT 1 FROM devices WHERE id = ?) "
                "ON CONFLICT (dev, day) DO UPDATE SET "
                "rejected = device_days.rejected + excluded.rejected",
                [(dev, day, n, dev) for dev, n in sorted(self._rejected_dev.items())])

    def _update_devices(self, c: Any, newest_entry: int) -> dict[str, Ack]:
        """The devices rows and the acks after this commit's readings (inserted already), in
        a few statements whatever the number of devices: one SELECT per DEVICE_CHUNK devices,
        one index walk per round for the devices whose watermark may move past the batch,
        one executemany UPDATE (each a round trip on PostgreSQL, inside the sequencer lock)."""
        by_dev: dict[str, list[int]] = {}
        for d in self._batch:
            by_dev.setdefault(d.dev, []).append(d.seq)
        devs = list(self._acked)
        rows: dict[str, tuple[int, int | None]] = {}
        for k in range(0, len(devs), DEVICE_CHUNK):
            part = devs[k:k + DEVICE_CHUNK]
            rows.update((r[0], (r[1], r[2])) for r in c.execute(
                "SELECT id, upto, last_seq FROM devices WHERE id IN "
                f"({', '.join('?' * len(part))})", part))
        upto_of: dict[str, int] = {}
        last_of: dict[str, int] = {}
        walk: list[str] = []
        for dev in devs:
            new = by_dev.get(dev, [])
            row = rows.get(dev)
            upto = row[0] if row else -1
            last = max(row[1] if row and row[1] is not None else -1, max(new, default=-1))
            if new:
                have = set(new)
                while upto + 1 in have:
                    upto += 1
                if upto < last:  # late readings (or other gateways') may continue the run
                    walk.append(dev)
            upto_of[dev], last_of[dev] = upto, last
        while walk:  # walk the index WALK seqs at a time, for every such device at once
            span = {dev: (upto_of[dev], min(upto_of[dev] + WALK, last_of[dev])) for dev in walk}
            ends = self.store.contiguous_end(c, span)
            again = []
            for dev in walk:
                upto_of[dev] = ends[dev]
                if ends[dev] == span[dev][1] < last_of[dev]:  # a whole page: read on
                    again.append(dev)
            walk = again
        updates = [(len(by_dev[dev]), last_of[dev], upto_of[dev], dev) for dev in devs
                   if dev in by_dev]
        if updates:
            c.executemany("UPDATE devices SET readings = readings + ?, last_seq = ?, upto = ? "
                          "WHERE id = ?", updates)
        return {dev: Ack(upto_of[dev], sorted(s for s in self._acked[dev] if s > upto_of[dev]),
                         newest_entry) for dev in devs}

    @staticmethod
    def _wanted(batch: list[_Reading]) -> set[tuple[str, int]]:
        """What the reconciliation looks up: each reading's (dev, seq) and its neighbours."""
        want: set[tuple[str, int]] = set()
        for d in batch:
            want.add((d.dev, d.seq))
            want.add((d.dev, d.seq + 1))
            if d.seq:
                want.add((d.dev, d.seq - 1))
        return want

    def _facts(self, stored: dict[tuple[str, int], bytes]) -> dict[tuple[str, int], _Fact]:
        """What the reconciliation needs of stored readings: SHA-256 of each, and the prev
        field of those that follow a reading of the open batch (a successor's check)."""
        in_batch = self._in_batch
        out: dict[tuple[str, int], _Fact] = {}
        for (dev, seq), cose in stored.items():
            prev: bytes | None = None
            if (dev, seq - 1) in in_batch:  # also if itself in the batch: it may be dropped
                try:
                    prev = decode(cose, max(self.max_message, len(cose))).prev
                except Rejection:
                    prev = None
            out[(dev, seq)] = (sha256(cose).digest(), prev)
        return out

    def _precheck(self) -> tuple[int, dict[tuple[str, int], _Fact]]:
        """Before the commit takes the sequencer lock: what is stored of the batch's (dev, seq)
        and neighbours (`_facts`), and the first readings.id not committed yet when it was
        read (ids are given out under the lock in commit order, so every later commit stores
        ids from there on). Inside the lock, `_reconcile` then looks only at those later rows:
        the index lookups, the hashing and the decoding stay out of the sequencer's hold."""
        since = self.store.reading_count()  # read first: rows from here on are looked at again
        return since, self._facts(self.store.stored_many(self._wanted(self._batch)))

    def _reconcile(self, c: Any) -> None:
        """Other processes append concurrently (`Store.concurrent`): inside the commit's
        transaction, which holds the sequencer lock, check the open batch against what they
        stored since it was classified. A reading stored meanwhile is dropped: with the same
        bytes it is still acknowledged (it is anchored), with other bytes it is an
        equivocation (the stored one stays). The chain checks are made again, against the
        stored neighbours (seq - 1 and seq + 1) and the batch, and replace the ones made at
        classification, which could not see readings another process had not yet stored."""
        batch = self._batch
        if not batch:
            return
        want = self._wanted(batch)
        if self._pre is None:
            facts = self._facts(self.store.stored_many(want, c))
        else:  # what was committed since the pre-check: one range scan on the primary key
            since, facts = self._pre
            later = [(dev, int(seq)) for dev, seq in c.execute(
                "SELECT dev, seq FROM readings WHERE id >= ?", (since,))]
            hits = [k for k in later if k in want]
            if hits:
                facts = {**facts, **self._facts(self.store.stored_many(hits, c))}
        keep: list[_Reading] = []
        for d in batch:
            fact = facts.get((d.dev, d.seq))
            if fact is None:
                keep.append(d)
            elif fact[0] != d.digest:
                self._rejected["equivocation"] += 1
                self._events.append(_Event("equivocation", d.dev, d.seq, d.raw,
                                           "stored by another process first"))
        if len(keep) != len(batch):
            self._batch = keep
            self._leaves = [leaf_hash(d.raw) for d in keep]
            self._groups = []  # recomputed at the commit
            self._in_batch = {(d.dev, d.seq): d for d in keep}
        events = [ev for ev in self._events if ev.kind != "chain_break"]
        in_batch = self._in_batch
        for d in keep:
            if d.seq == 0:
                expected: bytes | None = ZERO_HASH
            else:
                before = in_batch.get((d.dev, d.seq - 1))
                if before is not None:
                    expected = before.digest
                else:
                    got = facts.get((d.dev, d.seq - 1))
                    expected = got[0] if got is not None else None
            if expected is not None and d.prev != expected:
                events.append(_Event("chain_break", d.dev, d.seq, None,
                                     f"prev {d.prev.hex()} != sha256 of seq {d.seq - 1} "
                                     f"{expected.hex()}"))
            after = facts.get((d.dev, d.seq + 1))
            if after is not None and (d.dev, d.seq + 1) not in in_batch:
                nxt = after[1]
                if nxt is not None and nxt != d.digest:
                    events.append(_Event("chain_break", d.dev, d.seq + 1, None,
                                         f"prev {nxt.hex()} != sha256 of late seq {d.seq} "
                                         f"{d.digest.hex()}"))
        self._events = events

    def _recheck_batch(self, c: Any) -> None:
        """Another process committed since our last look: drop open-batch readings that are now
        stored, or whose device key changed or was revoked."""
        self.reload()
        keep: list[_Reading] = []
        for d in self._batch:
            row = c.execute("SELECT cose FROM readings WHERE dev = ? AND seq = ?",
                            (d.dev, d.seq)).fetchone()
            if row is not None:
                if bytes(row[0]) != d.raw:
                    self._rejected["equivocation"] += 1
                    self._events.append(_Event("equivocation", d.dev, d.seq, d.raw,
                                               "stored by another process first"))
                continue  # stored meanwhile: still acknowledged (it is anchored)
            entry = self._keys.get(d.dev)
            if entry is None or entry[1] != "active":
                self._rejected["revoked_device"] += 1
                self._rejected_dev[d.dev] += 1
                self._acked.get(d.dev, set()).discard(d.seq)
                continue
            m = decode(d.raw, max(self.max_message, len(d.raw)))
            reason = check_signature(entry[0], m.to_be_signed, m.signature)
            if reason:
                self._rejected[reason] += 1
                self._rejected_dev[d.dev] += 1
                self._acked.get(d.dev, set()).discard(d.seq)
                continue
            keep.append(d)
        self._batch = keep
        self._leaves = [leaf_hash(d.raw) for d in keep]
        self._groups = []  # recomputed at the commit
        self._in_batch = {(d.dev, d.seq): d for d in keep}

    # --- rules (docs/rules.md): what the service's action loop calls -------------------------

    def pending_actions(self, after: int = -1) -> list[RecordEntry]:
        """Action entries above index `after` with no outcome yet (a restart resumes them)."""
        return self.store.pending_actions(after=after)

    def record_outcomes(self, outcomes: Sequence[tuple[int, str, str | None, bytes | None]]
                        ) -> list[int]:
        return self.store.record_outcomes(self.signer, outcomes)

    def confirm_command(self, device: str, command_id: int, ok: bool, reason: str | None,
                        cose: bytes) -> int | None:
        """A device's verified confirmation of command `command_id` (the index of the action
        entry that ordered it): the outcome entry "done" (or "failed" with the device's
        reason), holding the confirmation's COSE bytes; when it comes before the executor
        recorded "sent", "sent" first (the confirmation proves it). None when that command
        was not ordered to `device` or is already closed (a repeat)."""
        row = self.store.one("SELECT status FROM actions WHERE entry = ?", (command_id,))
        body = self.store.entry_body(command_id) if row is not None else None
        if body is None or row[0] not in ("pending", "sent"):
            return None
        a = decode_entry(body)
        if not isinstance(a, RecordEntry) or a.fields["action"].get("type") != "command" \
                or a.fields["action"].get("device") != device:
            return None
        end = (command_id, "done", None, cose) if ok else (
            command_id, "failed", reason or "refused by the device", None)
        done = self.store.record_outcomes(self.signer, [(command_id, "sent", None, None), end])
        return done[-1] if done else None

    def tick_rules(self) -> list[int]:
        """Silence rules at the gateway's time now: the action entries written."""
        return self.rules.tick()

    # --- lifetime ------------------------------------------------------------------------------

    def gateway_key_id(self) -> str:
        return note.gateway_key_id(self.signer)

    def latest_checkpoint(self) -> str | None:
        latest = self.store.latest_checkpoint()
        return latest[1] if latest else None

    def close(self) -> None:
        self.pool.close()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def feed(pipe: Pipeline, chunks: Iterable[Sequence[Message]],
         on_outcomes: Callable[[list[Outcome]], None] | None = None,
         on_commit: Callable[[CommitResult], None] | None = None, *, ahead: int = 3) -> None:
    """Run a stream of message chunks through `pipe`, committing whenever the open batch holds
    `batch_max` readings and once at the end. Up to `ahead` chunks are handed to the pool before
    the oldest is classified, so the verifier processes keep working while a chunk is classified
    and while a commit writes to SQLite (which releases the GIL) and waits for its fsync. Used by
    `ingest` and the benchmark."""
    queue: deque[Submission] = deque()
    for chunk in chunks:
        queue.append(pipe.start(chunk))
        if len(queue) > ahead:
            _finish(pipe, queue.popleft(), on_outcomes, on_commit)
    while queue:
        _finish(pipe, queue.popleft(), on_outcomes, on_commit)
    res = pipe.commit()
    if res is not None and on_commit is not None:
        on_commit(res)


def _finish(pipe: Pipeline, sub: Submission,
            on_outcomes: Callable[[list[Outcome]], None] | None,
            on_commit: Callable[[CommitResult], None] | None) -> None:
    outs = pipe.finish(sub)
    if on_outcomes is not None:
        on_outcomes(outs)
    if pipe.pending() >= pipe.batch_max:
        res = pipe.commit()
        if res is not None and on_commit is not None:
            on_commit(res)
