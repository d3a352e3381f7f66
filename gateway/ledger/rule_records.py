"""The record kinds of the rules (docs/rules.md): `rules`, `action`, `outcome`.

rules entry (`iot-anchor rules apply FILE`)::

    {..., "kind": "rules", "text": the TOML file as UTF-8 text, "digest": SHA-256 of the text's
     UTF-8 bytes, "version": 1, 2, ... (one more than the previous rules entry)}

action entry (a rule fired; written in the transaction of the batch that made it fire)::

    {..., "kind": "action", "rule": rule name, "version": the rule set's version,
     "set": index of the rules entry, "batch": index of the batch entry whose readings (or
     commit) made it fire, "trigger": "readings" | "silence" | "rejections",
     "readings": [[dev, seq, leaf hash], ...] (the triggering readings, in ledger order),
     "now": the gateway time (ms) the rule used as its input, "action": {"type": ..., ...},
     ? "device": the silent or refused device, ? "since": ms of its last reading (silence),
     ? "reason": the rejection reason, ? "times": [ms, ...] (rejections)}

outcome entry (what became of an action)::

    {..., "kind": "outcome", "action": index of the action entry,
     "status": "sent" | "failed" | "done", ? "reason": text (failed), ? "confirmation": the
     device's COSE_Sign1 confirmation bytes (done)}
"""

from __future__ import annotations

from typing import Any

from gateway.ledger.entry import RECORD_KINDS, EntryError, RecordKind
from gateway.ledger.merkle import HASH_SIZE

TRIGGERS = ("readings", "silence", "rejections")
ACTION_TYPES = ("alert", "webhook", "command")
OUTCOME_STATUSES = ("sent", "failed", "done")
MAX_RULES_TEXT = 60 * 1024


def _text(f: dict[str, Any], name: str, limit: int = 255) -> str:
    v = f.get(name)
    if type(v) is not str or not v or len(v.encode()) > limit:
        raise EntryError(f"entry field {name!r} must be 1..{limit} bytes of text, got {v!r}")
    return v


def _uint(f: dict[str, Any], name: str, minimum: int = 0) -> int:
    v = f.get(name)
    if type(v) is not int or not minimum <= v < 1 << 63:
        raise EntryError(f"entry field {name!r} must be an integer >= {minimum}, got {v!r}")
    return v


def _check_rules(f: dict[str, Any]) -> None:
    _text(f, "text", MAX_RULES_TEXT)
    d = f["digest"]
    if type(d) is not bytes or len(d) != HASH_SIZE:
        raise EntryError("rules entry field 'digest' must be 32 bytes")
    _uint(f, "version", 1)


def _check_action(f: dict[str, Any]) -> None:
    _text(f, "rule")
    _uint(f, "version", 1)
    _uint(f, "set")
    _uint(f, "batch")
    _uint(f, "now")
    if f["trigger"] not in TRIGGERS:
        raise EntryError(f"action entry field 'trigger' must be one of {TRIGGERS}")
    rs = f["readings"]
    if type(rs) is not list or not all(
            type(r) is list and len(r) == 3 and type(r[0]) is str and type(r[1]) is int
            and type(r[2]) is bytes and len(r[2]) == HASH_SIZE for r in rs):
        raise EntryError("action entry field 'readings' must be a list of [dev, seq, leaf hash]")
    a = f["action"]
    if type(a) is not dict or a.get("type") not in ACTION_TYPES:
        raise EntryError(f"action entry field 'action' must be a map with 'type' one of "
                         f"{ACTION_TYPES}")
    if "device" in f:
        _text(f, "device", 64)
    if "since" in f:
        _uint(f, "since")
    if "reason" in f:
        _text(f, "reason", 64)
    if "times" in f and (type(f["times"]) is not list
                         or not all(type(x) is int and x >= 0 for x in f["times"])):
        raise EntryError("action entry field 'times' must be a list of integers")


def _check_outcome(f: dict[str, Any]) -> None:
    _uint(f, "action")
    status = f["status"]
    if status not in OUTCOME_STATUSES:
        raise EntryError(f"outcome entry field 'status' must be one of {OUTCOME_STATUSES}")
    if ("reason" in f) != (status == "failed"):
        raise EntryError("an outcome entry has a 'reason' exactly when its status is 'failed'")
    if "reason" in f:
        _text(f, "reason", 1024)
    if "confirmation" in f and (status != "done" or type(f["confirmation"]) is not bytes):
        raise EntryError("only a 'done' outcome holds 'confirmation' bytes")


RECORD_KINDS["rules"] = RecordKind(frozenset({"text", "digest", "version"}),
                                   check=_check_rules, max_size=MAX_RULES_TEXT + 1024)
RECORD_KINDS["action"] = RecordKind(
    frozenset({"rule", "version", "set", "batch", "trigger", "readings", "now", "action"}),
    frozenset({"device", "since", "reason", "times"}), check=_check_action, max_size=32 * 1024)
RECORD_KINDS["outcome"] = RecordKind(frozenset({"action", "status"}),
                                     frozenset({"reason", "confirmation"}),
                                     check=_check_outcome, max_size=8 * 1024)
