"""The console's reads: Store -> JSON-ready dicts. Each runs on an HTTP reader thread with its
own read-only Store (`HttpContext.read`), and each is bounded: a page of devices, at most
`MAX_POINTS` readings of one device, the newest N events, records or readings.

Bad parameters raise `BadRequest` (the routes answer 400, or 413 for a range with too many
readings), a missing device `NotFound` (404).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from typing import Any

from gateway.errors import AnchorError
from gateway.ledger.entry import RECORD_KINDS
from gateway.observe.metrics import LedgerFigures
from gateway.storage.store import Store
from gateway.wire.cose import Decoded, Rejection, decode

MAX_POINTS = 10_000  # readings in one series answer; a longer range gets 413
PAGE_MAX = 500  # devices per page
LATEST = 20  # a device's newest readings shown with receipt links
EVENTS_MAX = 200
RECORDS_MAX = 200
DAY_MS = 86_400_000
# the kinds the console lists, where the ledger has them (the features that write them are
# rule sets and their actions, datasets and models)
RECORD_LISTS = ("rules", "action", "dataset", "model")


_USERINFO = re.compile(r"//[^/@\s]*@")


class BadRequest(Exception):
    def __init__(self, what: str, status: int = 400) -> None:
        super().__init__(what)
        self.what = what
        self.status = status


class NotFound(BadRequest):
    def __init__(self, what: str) -> None:
        super().__init__(what, 404)


def fingerprint(key: bytes) -> str:
    """A device key's fingerprint: the first 8 bytes of SHA-256(SEC1 key), hex in pairs."""
    h = hashlib.sha256(key).digest()[:8].hex()
    return ":".join(h[i:i + 4] for i in range(0, 16, 4))


def _witnesses(f: dict[str, Any]) -> list[dict[str, Any]]:
    """The witnesses' states by the name in their vkey (not the key, nor the URL, which may
    carry credentials; a URL's user:password in the detail is masked)."""
    return [{"witness": str(w["witness"]).split("+", 1)[0], "size": w["size"],
             "state": w["state"], "detail": _USERINFO.sub("//***@", str(w["detail"])),
             "t": w["t"]} for w in f["witnesses"]]


def figures(store: Store) -> LedgerFigures:
    f = store.console_figures()
    f["witnesses"] = _witnesses(f)
    return LedgerFigures(readings=f["readings"], entries=f["entries"], devices=f["devices"],
                         revoked=f["revoked"], checkpoint_size=f["checkpoint_size"],
                         checkpoint_time_ms=f["last_entry_t"], rejected=f["rejected"],
                         events=f["events"], cosignatures=f["cosignatures"],
                         witnesses=tuple(f["witnesses"]))


def overview(store: Store) -> dict[str, Any]:
    f = store.console_figures()
    cp = f.pop("checkpoint")
    lines = cp.rstrip("\n").split("\n") if cp else []
    blank = lines.index("") if "" in lines else len(lines)
    f["checkpoint"] = {
        "size": f["checkpoint_size"], "time": f.pop("last_entry_t"),
        "root": lines[2] if len(lines) > 2 else None,
        "signatures": len(lines) - blank - 1 if lines else 0,  # the gateway's
        "cosignatures": f.pop("cosignatures"),
        "note": cp,
    } if cp else None
    f["witnesses"] = _witnesses(f)
    f["recent_events"] = store.console_events(None, 10)
    return f


def devices(store: Store, *, sort: str, desc: bool, q: str, status: str, offset: int,
            limit: int) -> dict[str, Any]:
    if sort not in Store.CONSOLE_SORTS:
        raise BadRequest(f"sort {sort!r} is unknown; use one of "
                         + ", ".join(sorted(Store.CONSOLE_SORTS)))
    if status not in ("", "active", "revoked"):
        raise BadRequest(f"status {status!r} is unknown; use active or revoked")
    if not 1 <= limit <= PAGE_MAX:
        raise BadRequest(f"limit {limit} is not between 1 and {PAGE_MAX}")
    if offset < 0:
        raise BadRequest(f"offset {offset} is negative")
    if len(q) > 64:
        raise BadRequest("q is longer than 64 characters (a device id is at most 64)")
    total, rows = store.console_devices(day=int(time.time() * 1000) // DAY_MS, sort=sort,
                                        desc=desc, q=q, status=status, offset=offset,
                                        limit=limit)
    for r in rows:
        r["fingerprint"] = fingerprint(r.pop("key"))
    return {"total": total, "offset": offset, "limit": limit, "devices": rows}


def _decoded(cose: bytes) -> Decoded | None:
    try:
        return decode(cose, max(2048, len(cose)))
    except Rejection:
        return None  # the pipeline stored it, so it decoded then: `ledger verify` tells more


def _reading(seq: int, batch: int, d: Decoded | None, times: dict[int, int]) -> dict[str, Any]:
    return {"seq": seq, "batch": batch, "ts": None if d is None else d.ts,
            "anchored": times.get(batch), "data": {} if d is None else d.data}


def device(store: Store, dev: str) -> dict[str, Any]:
    row = store.device(dev)
    if row is None:
        raise NotFound(f"no device {dev!r} is registered")
    day = int(time.time() * 1000) // DAY_MS
    keys = store.console_key_history(dev)
    entry_t = store.console_entry_times([a for _, a, _ in keys]
                                        + [b for _, _, b in keys if b is not None])
    days = store.console_device_days(dev)
    latest = store.console_readings(dev, 0, 1 << 62, LATEST, newest=True)
    times = store.console_entry_times([b for _, b, _ in latest])
    gaps, short = ([], None) if row.last_seq is None else store.console_gaps(
        dev, row.upto, row.last_seq)
    return {
        "gaps": gaps, "gaps_checked_to": short,
        "id": dev, "status": row.status, "readings": row.readings, "last_seq": row.last_seq,
        "upto": row.upto, "fingerprint": fingerprint(row.key),
        "missing": 0 if row.last_seq is None else row.last_seq + 1 - row.readings,
        "last_seen": store.console_last_seen(dev),
        "today": next((n for d, n, _ in days if d == day), 0),
        "rejected_today": next((r for d, _, r in days if d == day), 0),
        "days": [{"day": d, "readings": n, "rejected": r} for d, n, r in days],
        "keys": [{"fingerprint": fingerprint(k), "from_entry": a, "from_t": entry_t.get(a),
                  "until_entry": b, "until_t": None if b is None else entry_t.get(b)}
                 for k, a, b in keys],
        "latest": [_reading(s, b, _decoded(c), times) for s, b, c in latest],
        "events": store.console_events(dev, 50),
    }


def _time_of(row: tuple[int, int, bytes], batch_t: Callable[[int], int | None]) -> float:
    """A reading's time in seconds: its own ts, else its batch's commit time."""
    d = _decoded(row[2])
    if d is not None and d.ts is not None:
        return float(d.ts)
    t = batch_t(row[1])
    return 0.0 if t is None else t / 1000


def _first_at(store: Store, dev: str, lo: int, hi: int, when: float,
              batch_t: Callable[[int], int | None]) -> int:
    """The smallest seq s in [lo, hi + 1] such that every stored reading from s on has a
    time >= `when`, by binary search on the (dev, seq) index: readings carry non-decreasing
    times in seq order (a device's clock; readings without one take their batch's time)."""
    a, b = lo, hi + 1
    while a < b:
        m = (a + b) // 2
        r = store.console_reading_from(dev, m)
        if r is None or r[0] > hi or _time_of(r, batch_t) >= when:
            b = m
        else:
            a = r[0] + 1
    return a


def series(store: Store, dev: str, start: float | None, end: float | None) -> dict[str, Any]:
    """The readings of `dev` with start <= time <= end (seconds; default: the hour up to its
    newest reading), as columns: t, seq, and one list per sensor (None where absent)."""
    if store.device(dev) is None:
        raise NotFound(f"no device {dev!r} is registered")
    bounds = store.console_seq_bounds(dev)
    cache: dict[int, int | None] = {}

    def batch_t(b: int) -> int | None:
        if b not in cache:
            cache[b] = store.console_entry_times([b]).get(b)
        return cache[b]

    if bounds is None:
        return {"dev": dev, "from": start, "to": end, "count": 0, "t": [], "seq": [],
                "sensors": {}}
    lo, hi = bounds
    if end is None:
        last = store.console_reading_from(dev, hi)
        end = _time_of(last, batch_t) if last else time.time()
    if start is None:
        start = end - 3600
    if start > end:
        raise BadRequest(f"from {start} is after to {end}")
    s0 = _first_at(store, dev, lo, hi, start, batch_t)
    s1 = _first_at(store, dev, s0, hi, end + 1e-6, batch_t) - 1
    n = store.console_count(dev, s0, s1) if s1 >= s0 else 0
    if n > MAX_POINTS:
        raise BadRequest(f"{n} readings in that range, more than {MAX_POINTS} per request: "
                         "choose a shorter range", 413)
    rows = store.console_readings(dev, s0, s1, MAX_POINTS) if n else []
    decoded = [(seq, b, _decoded(c)) for seq, b, c in rows]
    need = [b for _, b, d in decoded if d is None or d.ts is None]
    cache.update(store.console_entry_times(need))
    t: list[float] = []
    seqs: list[int] = []
    sensors: dict[str, list[float | None]] = {}
    for seq, b, d in decoded:
        when = float(d.ts) if d is not None and d.ts is not None else (batch_t(b) or 0) / 1000
        if not start <= when <= end:
            continue  # a clock that went backwards: outside the range after all
        t.append(when)
        seqs.append(seq)
        for name, v in (d.data.items() if d is not None else ()):
            col = sensors.get(name)
            if col is None:
                col = sensors[name] = [None] * (len(t) - 1)
            col.append(v)
        for col in sensors.values():
            if len(col) < len(t):
                col.append(None)
    return {"dev": dev, "from": start, "to": end, "count": len(t), "t": t, "seq": seqs,
            "sensors": sensors}


def _json_value(v: Any) -> Any:
    """A record field for the page: bytes as hex, but a public key (a 65-byte SEC1 P-256
    point, e.g. a model's `owner`) as its fingerprint: the console shows no keys."""
    if isinstance(v, bytes | bytearray):
        if len(v) == 65 and v[0] == 4:
            return "key " + fingerprint(bytes(v))
        return bytes(v).hex()
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_value(x) for x in v]
    return v


def record_kinds(store: Store) -> list[str]:
    kinds = list(RECORD_LISTS) + sorted(k for k in RECORD_KINDS if k not in RECORD_LISTS)
    return store.console_kinds_present(kinds)


def records(store: Store, kind: str, before: int | None, limit: int) -> dict[str, Any]:
    if kind not in RECORD_LISTS and kind not in RECORD_KINDS:
        raise BadRequest(f"kind {kind!r} is not a record kind; use one of "
                         + ", ".join(RECORD_LISTS))
    if not 1 <= limit <= RECORDS_MAX:
        raise BadRequest(f"limit {limit} is not between 1 and {RECORDS_MAX}")
    try:
        found = store.console_records(kind, before=before, limit=limit)
    except AnchorError as e:
        raise BadRequest(f"the {kind} entries cannot be read: {e.what}", 500) from None
    return {"kind": kind, "records": [{"i": e.i, "t": e.t, "fields": _json_value(e.fields)}
                                      for e in found]}


def events(store: Store, limit: int) -> dict[str, Any]:
    if not 1 <= limit <= EVENTS_MAX:
        raise BadRequest(f"limit {limit} is not between 1 and {EVENTS_MAX}")
    return {"events": store.console_events(None, limit)}
