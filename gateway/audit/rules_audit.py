"""`ledger verify` of the rules (step 7 of gateway/audit/store_audit.py, for the kinds rules,
action and outcome): the applied rule sets are run again over the stored readings in ledger
order, and the recorded firings must be exactly the ones they imply.

* a `rules` entry: its digest is SHA-256 of its text, its version one more than the last
  one's, and its text parses; it replaces the engine (fresh state) from the next entry on.
* after each batch entry: the engine's firings for the batch's readings (with the batch
  entry's t), then its silence tick at t, must be the action entries that follow the batch
  entry, field for field. A firing the rules make and no entry records is "missing" (named by
  the batch entry); an entry that differs is "altered"; an action entry no rule makes there is
  "extra".
* an action entry anywhere else is a silence tick between batches or a rejections firing:
  its recorded inputs (gateway time, the device's last reading, refusal times) must make the
  rule fire, given the state the ledger implies.
* an `outcome` entry names an earlier action entry; an action has one "sent" or "failed",
  and a command after its "sent" at most one "done" or "failed" (the device's answer).
* the `actions` table (what the executor resumes after a restart) has a row per action entry
  with the status and index of its latest outcome (or "pending"), and no other rows.
"""

from __future__ import annotations

import hashlib
import weakref
from typing import TYPE_CHECKING, Any

from gateway.errors import IntegrityError
from gateway.ledger.entry import BatchEntry, RecordEntry
from gateway.ledger.merkle import leaf_hash
from gateway.rules.engine import Engine
from gateway.rules.runtime import engine_for, reading_input

if TYPE_CHECKING:
    from gateway.audit.store_audit import Auditor

KINDS = ("rules", "action", "outcome")
_done: weakref.WeakSet[Any] = weakref.WeakSet()  # auditors that ran it (one call per kind)


def _what(f: dict[str, Any]) -> str:
    rs = ", ".join(f"{d}#{s}" for d, s, _ in f.get("readings", []))
    return f"rule {f.get('rule')!r} ({f.get('trigger')}{': ' + rs if rs else ''})"


def audit_rules(auditor: Auditor, _entries: list[RecordEntry]) -> None:
    """RECORD_AUDITS' function for the three kinds: runs `check_firings` once per audit."""
    if auditor not in _done:
        _done.add(auditor)
        check_firings(auditor)


def check_firings(auditor: Auditor) -> None:
    """The whole check (module docstring) over the auditor's entries."""
    records = [e for k in KINDS for e in auditor.records.get(k, [])]
    merged: list[BatchEntry | RecordEntry] = sorted([*auditor.batch_entries, *records],
                                                    key=lambda e: e.i)
    engine: Engine | None = None
    rules_entry: RecordEntry | None = None
    version = 0
    actions: dict[int, RecordEntry] = {}
    outcomes: dict[int, list[str]] = {}
    last_outcome: dict[int, tuple[str, int]] = {}  # action -> (status, outcome entry)
    expected: list[dict[str, Any]] = []
    exp_batch = -1
    for e in merged:
        if expected and not (isinstance(e, RecordEntry) and e.kind == "action"
                             and e.fields.get("batch") == exp_batch
                             and e.fields.get("trigger") != "rejections"):
            for f in expected:
                auditor.problem("entries", exp_batch, f"missing firing: the rules fire {_what(f)} "
                                "after this batch and no action entry records it")
            expected = []
        if isinstance(e, BatchEntry):
            if engine is None or rules_entry is None:
                continue
            span = auditor.c.execute("SELECT first, n FROM batches WHERE entry = ?",
                                     (e.i,)).fetchone()
            rows = [] if span is None else auditor.c.execute(  # (the batches audit names it)
                "SELECT dev, seq, cose FROM readings WHERE id >= ? AND id < ? ORDER BY id",
                (span[0], span[0] + span[1])).fetchall()
            readings = [reading_input(bytes(c), str(d), int(s), leaf_hash(bytes(c)))
                        for d, s, c in rows]
            engine.begin()
            firings = engine.batch(readings, e.t) + engine.tick(e.t)
            engine.commit()
            expected = [f.record(engine.rs, version, rules_entry.i, e.i) for f in firings]
            exp_batch = e.i
            continue
        if e.kind == "rules":
            f = e.fields
            if hashlib.sha256(f["text"].encode()).digest() != f["digest"]:
                auditor.problem("entries", e.i, "rules entry: digest is not SHA-256 of its text")
            if f["version"] != version + 1:
                auditor.problem("entries", e.i, f"rules entry: version {f['version']}, expected "
                                f"{version + 1}")
            version = int(f["version"])
            try:
                engine = engine_for(e)
            except IntegrityError as err:
                auditor.problem("entries", e.i, err.what)
                engine = None
            rules_entry = e
        elif e.kind == "action":
            actions[e.i] = e
            if expected:
                want = expected.pop(0)
                if e.fields != want:
                    diff = sorted(k for k in set(e.fields) | set(want)
                                  if e.fields.get(k) != want.get(k))
                    auditor.problem("entries", e.i, f"altered firing: it records "
                                    f"{_what(e.fields)}, the rules give {_what(want)} "
                                    f"(fields {', '.join(diff)} differ)")
                continue
            if engine is None or rules_entry is None:
                auditor.problem("entries", e.i, f"extra firing: {_what(e.fields)} but no rule "
                                "set is applied before it")
                continue
            if e.fields.get("set") != rules_entry.i or e.fields.get("version") != version:
                auditor.problem("entries", e.i, f"extra firing: it names rule set entry "
                                f"{e.fields.get('set')}, the applied one is entry {rules_entry.i}")
                continue
            if e.fields.get("trigger") == "readings":
                auditor.problem("entries", e.i, f"extra firing: {_what(e.fields)} is not "
                                "what the rules make of the readings before it")
                continue
            why = engine.replay_recorded(e.fields)
            if why is not None:
                auditor.problem("entries", e.i, f"extra firing: {_what(e.fields)}: {why}")
        else:  # outcome
            a = e.fields["action"]
            act = actions.get(a)
            status = e.fields["status"]
            if act is None:
                auditor.problem("entries", e.i, f"outcome of entry {a}, which is not an earlier "
                                "action entry")
                continue
            seen = outcomes.setdefault(a, [])
            cmd = act.fields["action"].get("type") == "command"
            # sent or failed first; then, for a command, done or failed (the device's answer)
            if not (not seen and status in ("sent", "failed")
                    or cmd and seen == ["sent"] and status in ("done", "failed")):
                auditor.problem("entries", e.i, f"outcome {status!r} of action entry {a} after "
                                f"{seen or 'none'}")
            seen.append(status)
            last_outcome[a] = (status, e.i)
    for f in expected:
        auditor.problem("entries", exp_batch, f"missing firing: the rules fire {_what(f)} after "
                        "this batch and no action entry records it")
    _check_actions_table(auditor, actions, last_outcome)


def _check_actions_table(auditor: Auditor, actions: dict[int, RecordEntry],
                         last_outcome: dict[int, tuple[str, int]]) -> None:
    """The `actions` table (what the executor resumes) equals what the entries say: a row per
    action entry, its status and outcome those of its latest outcome entry (else pending)."""
    rows = {int(e): (str(r), str(st), None if o is None else int(o)) for e, r, st, o in
            auditor.c.execute("SELECT entry, rule, status, outcome FROM actions")}
    for i, a in actions.items():
        st, o = last_outcome.get(i, ("pending", None))
        want = (a.fields["rule"], st, o)
        if rows.get(i) != want:
            auditor.problem("actions", i, f"row {rows.get(i)}, the ledger says {want}")
    for i in sorted(set(rows) - set(actions)):
        auditor.problem("actions", i, "row for an entry that is not an action entry")


AUDITS = dict.fromkeys(KINDS, audit_rules)
