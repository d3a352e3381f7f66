"""The rules inside the pipeline's commit: the applied rule set's engine, fed with each batch
in the batch's own transaction, its firings appended as `action` entries right after the
batch entry (each with its checkpoint), its state saved in the same transaction.

    rt = RuleRuntime(store, signer)
    with store.write() as c:              # the pipeline's commit
        rt.begin(c)                       # loads a newly applied set
        ... batch entry ...
        head = rt.on_batch(c, head, batch_entry, readings, t)
        head = rt.on_rejections(c, head, [(dev, reason), ...], t)
        rt.save(c)
    rt.committed()                        # or rt.rolled_back() when the transaction failed
    rt.new_actions                        # the action entries the transaction wrote
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import cbor2

from gateway.errors import IntegrityError
from gateway.ledger.entry import RecordEntry
from gateway.rules.engine import Engine, Firing, Reading
from gateway.rules.parse import RuleFileError, parse_rules
from gateway.storage.store import Head, Store, now_ms
from gateway.wire.cose import Rejection, decode

log = logging.getLogger("iot_anchor.rules")
Values = tuple["int | None", dict[str, Any]]  # a reading's ts and data, as decode gives them


def engine_for(entry: RecordEntry, states: Sequence[tuple[int, str, bytes]] = ()) -> Engine:
    """The engine of a `rules` entry (its text parsed again), with stored states."""
    try:
        rs = parse_rules(entry.fields["text"])
    except RuleFileError as e:
        raise IntegrityError(f"rules entry {entry.i} does not parse: {e.errors[0]}",
                             "run 'iot-anchor ledger verify'") from None
    return Engine(rs, entry.t, (((r, d), tuple(_thaw(cbor2.loads(s)))) for r, d, s in states))


def _thaw(v: Any) -> Any:
    """CBOR arrays of the stored state -> the engine's tuples."""
    return tuple(_thaw(x) for x in v) if isinstance(v, list) else v


def reading_input(raw: bytes, dev: str, seq: int, leaf: bytes) -> Reading:
    """What the engine sees of one stored or accepted reading."""
    try:
        d = decode(raw, max(2048, len(raw)))
    except Rejection:  # stored readings decode (they were verified); keep the promise anyway
        return (dev, seq, leaf, None, {})
    return (dev, seq, leaf, d.ts, d.data)


class RuleRuntime:
    def __init__(self, store: Store, signer: Any) -> None:
        self.store = store
        self.signer = signer
        self.entry: RecordEntry | None = None
        self.engine: Engine | None = None
        self.new_actions: list[int] = []
        self._pending: list[int] = []
        self.last_batch = -1  # the newest batch entry (-1: not looked up yet)
        self._seen_version = -1  # the store's data_version when the engine was last in sync

    @property
    def active(self) -> bool:
        """A rule set with at least one rule is applied (after begin())."""
        return self.engine is not None and self.engine.active

    @property
    def reads_values(self) -> bool:
        """The applied rule set has rules on readings: `on_batch` reads their ts and data
        (after begin())."""
        return self.engine is not None and bool(self.engine.rs.by_trigger("readings"))

    def begin(self, c: Any) -> None:
        latest = self.store.latest_rules(c)
        if latest is None:
            self.entry = self.engine = None
        elif self.entry is None or latest.i != self.entry.i:
            self.entry = latest
            self.engine = engine_for(latest, self.store.rule_states(latest.i, c))
            log.info("rules: set version %s (entry %d), %d rules", latest.fields["version"],
                     latest.i, len(self.engine.rs.rules))
        self._pending = []
        self._seen_version = self.store.data_version()
        if self.engine is not None:
            self.engine.begin()
            if self.last_batch < 0:
                row = c.execute("SELECT MAX(i) FROM entries WHERE kind = 'batch'").fetchone()
                self.last_batch = 0 if row[0] is None else int(row[0])

    def reload(self) -> None:
        """Forget the engine (another process committed): the next begin() reloads it."""
        self.entry = self.engine = None
        self.last_batch = -1

    def _append(self, c: Any, head: Head, firings: list[Firing], batch: int, t: int) -> Head:
        assert self.engine is not None and self.entry is not None
        version = int(self.entry.fields["version"])
        for f in firings:
            head, i = self.store.append_record_in(
                c, head, "action", f.record(self.engine.rs, version, self.entry.i, batch), t,
                self.signer)
            self._pending.append(i)
        return head

    def on_batch(self, c: Any, head: Head, batch: int,
                 readings: Sequence[tuple[bytes, str, int, bytes, Values | None]],
                 t: int) -> Head:
        """The readings (raw, dev, seq, leaf hash, (ts, data) or None: decode raw) of batch
        entry `batch`, then a tick at t."""
        self.last_batch = batch
        if self.engine is None or not self.engine.active:
            return head
        eng = self.engine
        firings = eng.batch([reading_input(raw, dev, seq, leaf) if v is None
                             else (dev, seq, leaf, v[0], v[1])
                             for raw, dev, seq, leaf, v in readings], t)
        firings += eng.tick(t)
        return self._append(c, head, firings, batch, t)

    def on_rejections(self, c: Any, head: Head, refused: Sequence[tuple[str, str]],
                      t: int) -> Head:
        if self.engine is None or not refused:
            return head
        firings: list[Firing] = []
        for dev, reason in refused:
            firings += self.engine.rejected(dev, reason, t)
        return self._append(c, head, firings, self.last_batch, t)

    def on_tick(self, c: Any, head: Head, now: int) -> Head:
        if self.engine is None:
            return head
        return self._append(c, head, self.engine.tick(now), self.last_batch, now)

    def save(self, c: Any) -> None:
        if self.engine is None or self.entry is None:
            return
        changed = self.engine.pending()
        if changed:
            encoded: dict[tuple[Any, ...], bytes] = {}  # many devices share one state
            rows = []
            for (r, d), st in changed.items():
                b = encoded.get(st)
                if b is None:
                    b = encoded[st] = cbor2.dumps(list(st), canonical=True)
                rows.append((r, d, b))
            self.store.save_rule_states(c, self.entry.i, rows)

    def committed(self) -> None:
        if self.engine is not None:
            self.engine.commit()
        self.new_actions = self._pending
        self._pending = []

    def rolled_back(self) -> None:
        if self.engine is not None:
            self.engine.rollback()
        self._pending = []
        self.new_actions = []

    def tick(self, now: int | None = None) -> list[int]:
        """Silence rules between batches, in their own transaction. Returns the action entries
        written (most ticks write none, and then nothing is written at all)."""
        t = now_ms() if now is None else now
        if self.store.data_version() != self._seen_version:
            self.reload()  # another process committed: its state changes are in the store
        latest = self.store.latest_rules()
        if latest is None or (self.entry is not None and latest.i == self.entry.i
                              and self.engine is not None
                              and not self.engine.rs.by_trigger("silence")):
            return []
        try:
            with self.store.write() as c:
                self.begin(c)
                if self.engine is None or not self.engine.rs.by_trigger("silence"):
                    self._pending = []
                    self.new_actions = []
                    return []
                self.on_tick(c, self.store.head(c), t)
                self.save(c)
        except BaseException:
            self.rolled_back()
            raise
        self.committed()
        return self.new_actions
