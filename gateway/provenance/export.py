"""`iot-anchor dataset export`: anchored readings as a dataset that a third party can check.

The steps (gateway/provenance/dataset.py has the layout, docs/provenance.md the reasons):

1. The selection is fixed at the ledger's size when the export starts (`below`): readings of
   batch entries appended later are not in it, so the same selection gives the same rows
   whenever it is evaluated again (`ledger verify` does).
2. One pass in (device, seq) order writes the Parquet row groups and readings.bin, folds each
   row's leaf into the dataset root, and writes (row, leaf) to the reading id's slot of a
   scratch file (40 bytes per reading id; not in memory). The readings are decoded on the
   verifier processes. Without --sensor the sensor columns are found on the way: each row
   group is spooled with its own sensors and conformed to their union at the end.
3. Batch by batch in ledger order, the batch's slots (its reading ids are consecutive) give
   the rows it holds, and batches.cbor gets their shared multi-leaf proof, checked against
   the batch root before it is written.
4. The dataset entry (kind `dataset`) is appended and its checkpoint signed; ledger.json gets
   that checkpoint and the inclusion proofs of the batch entries, the devices' registry
   entries and the dataset entry; croissant.json is written last (atomically), so a directory
   without it is an unfinished export, which `dataset verify` refuses.

Memory is bounded by a row group (ROW_GROUP rows) and one batch, not by the dataset's size.
On any failure the files written so far are removed (the directory too, when the export
created it); a dataset entry already appended stays in the ledger (it proves nothing false).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import pyarrow as pa
import pyarrow.parquet as pq

from gateway.errors import ConfigError, IntegrityError
from gateway.ingest.verifier import Context, VerifierPool
from gateway.ledger import merkle, multiproof, note
from gateway.ledger.batch import GROUP, split_nodes
from gateway.ledger.entry import decode_entry
from gateway.ledger.provenance import DATASET, check_name
from gateway.provenance import croissant
from gateway.provenance.dataset import (
    BATCHES_FILE,
    DATA_FILE,
    FIXED_COLUMNS,
    LEDGER_FILE,
    LEDGER_FORMAT,
    METADATA_FILE,
    READINGS_FILE,
    BatchProof,
    Selection,
    check_sensor_names,
    reading_record,
)
from gateway.provenance.files import file_error, fsync_path, sha256_file, write_atomic
from gateway.provenance.select import Decoded1, decode_rows, selection_of
from gateway.storage.store import Store

ROW_GROUP = 16384
READ_CHUNK = 4096  # readings per fetch from the store
_SLOT = 40  # scratch record per reading id: row + 1 (8 bytes, 0 = not a row) || leaf
_NONE = bytes(8)


@dataclass
class ExportResult:
    name: str
    rows: int
    entry: int
    root: bytes
    files: list[str]
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.rows, "entry": self.entry,
                "root": self.root.hex(), "files": self.files}


class Progress:
    """A one-line progress bar on stderr, only when it is a terminal."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.label = label
        self.total = max(total, 1)
        self.enabled = self.stream.isatty()
        self.last = 0.0

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.1 and done < self.total:
            return
        self.last = now
        frac = min(1.0, done / self.total)
        self.stream.write(f"\r{self.label} [{'#' * int(frac * 30):<30}] {done}/{self.total} "
                          f"{frac:4.0%}")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _schema(sensors: list[str]) -> pa.Schema:
    return pa.schema([("device", pa.string()), ("seq", pa.int64()),
                      ("ts", pa.timestamp("ms", tz="UTC")),
                      *[(s, pa.float64()) for s in sensors],
                      ("leaf", pa.binary(32)), ("entry", pa.int64())])


class _Out:
    """The output directory: refuses a non-empty one, removes what it wrote on failure."""

    def __init__(self, out: Path) -> None:
        self.path = out
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(f"{out} exists and is not empty",
                              "give a new or empty directory for the dataset")
        self.created = not out.exists()
        try:
            for sub in ("data", "provenance"):
                (out / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise file_error(e, out, "creating") from e

    def cleanup(self) -> None:
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for child in list(self.path.iterdir()) if self.path.is_dir() else []:
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    child.unlink()


def export(store: Store, out: Path, name: str, *, devices: list[str], sensors: list[str],
           since: int | None, until: int | None, description: str | None = None,
           progress_stream: TextIO | None = None) -> ExportResult:
    """Export the selection to `out` and anchor it (the module docstring's steps)."""
    t0 = time.perf_counter()
    check_name(name)
    known = {d.id for d in store.devices()}
    unknown = sorted(set(devices) - known)
    if unknown:
        raise ConfigError(f"unknown device(s): {', '.join(unknown)}",
                          "see 'iot-anchor device list' for the registered ids")
    if since is not None and until is not None and since >= until:
        raise ConfigError(f"--since {since} is not before --until {until}",
                          "give a time range that is not empty")
    sel = Selection(tuple(sorted(set(devices))), tuple(sorted(set(sensors))),
                    store.entry_count(), since, until)
    check_sensor_names(sel.sensors)
    vkey = store.vkey()
    signer = store.load_signer()
    o = _Out(out)
    try:
        result = _export(store, o.path, name, sel, vkey, signer, description, progress_stream)
    except BaseException as e:
        o.cleanup()
        if isinstance(e, OSError):
            raise file_error(e, out, "writing the dataset to") from e
        raise
    result.seconds = time.perf_counter() - t0
    return result


def _export(store: Store, out: Path, name: str, sel: Selection, vkey: str, signer: Any,
            description: str | None, stream: TextIO | None) -> ExportResult:
    scratch_dir = Path(tempfile.mkdtemp(prefix="iot-anchor-export-"))
    try:
        with open(scratch_dir / "slots", "w+b") as scratch:
            slots = scratch.fileno()
            rows, root, sensors, devs, frame, touched = _write_rows(
                store, out, sel, list(sel.sensors) or None, slots, scratch_dir,
                Progress("exporting: readings", store.provenance_count(sel.devices, sel.below),
                         stream))
            if rows == 0:
                raise _empty(sel)
            batches = _write_batches(store, out, slots, touched)
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)
    data_digest = sha256_file(out / DATA_FILE)
    fields = {"name": name, "rows": rows, "root": root, "selection": sel.as_fields(),
              "files": [{"path": DATA_FILE, "sha256": data_digest}]}
    # the checkpoint signed with the entry covers it and everything the provenance proves
    entry, cp_note = store.append_record(signer, DATASET, fields)
    cp = note.verify_checkpoint(cp_note, vkey)
    size = cp.size
    wanted = sorted({*batches, entry, *_registry_entries(store, devs, sel.below)})
    ledger = {"version": LEDGER_FORMAT, "checkpoint": cp_note, "size": size, "dataset": entry,
              "entries": [_proven(store, i, size) for i in wanted]}
    write_atomic(out / LEDGER_FILE, (json.dumps(ledger, indent=1) + "\n").encode())
    files = [DATA_FILE, BATCHES_FILE, LEDGER_FILE, READINGS_FILE]
    meta = croissant.metadata(
        name=name, description=description or _describe(name, sel, rows, devs),
        files=[(f, sha256_file(out / f).hex()) for f in files], sensors=sensors, rows=rows,
        devices=devs, timeframe=frame, vkey=vkey, checkpoint_size=size,
        checkpoint_root=cp.root, entry=entry, root=root, selection=sel.as_fields(),
        published_ms=decode_entry(store.entry_body(entry) or b"").t)
    write_atomic(out / METADATA_FILE, (json.dumps(meta, indent=1) + "\n").encode())
    return ExportResult(name, rows, entry, root, [METADATA_FILE, *files], 0.0)


def _empty(sel: Selection) -> ConfigError:
    return ConfigError("the selection holds no anchored reading",
                       "check the --device, --since, --until and --sensor options against "
                       "'iot-anchor ledger status'")


def _describe(name: str, sel: Selection, rows: int, devs: list[str]) -> str:
    return (f"{name}: {rows} anchored sensor readings from {len(devs)} device(s), exported "
            f"from an iot-anchor ledger of {sel.below} entries with their provenance.")


class _RowGroups:
    """Row groups to data/readings.parquet. With the sensors known (--sensor) they are written
    there at once; otherwise each group, with the sensors it holds, is spooled to a scratch
    Parquet file, and `finish` writes them all with the union of the sensors (null columns
    added), so the readings are decoded once."""

    def __init__(self, path: Path, sensors: list[str] | None, spool: Path) -> None:
        self.path = path
        self.fixed = sensors
        self.spool = spool
        self.parts: list[Path] = []
        self.seen: set[str] = set(sensors or ())
        self.writer = pq.ParquetWriter(path, _schema(sensors), compression="zstd") \
            if sensors is not None else None

    def write(self, cols: dict[str, list[Any]], sensors: dict[str, list[Any]]) -> None:
        names = sorted(sensors)
        check_sensor_names(names)
        table = pa.Table.from_pydict({**{c: cols[c] for c in FIXED_COLUMNS},
                                      **{s: sensors[s] for s in names},
                                      "leaf": cols["leaf"], "entry": cols["entry"]},
                                     schema=_schema(names))
        if self.writer is not None:
            self.writer.write_table(table)
            return
        self.seen.update(names)
        part = self.spool / f"part-{len(self.parts):06d}.parquet"
        pq.write_table(table, part, compression="none")
        self.parts.append(part)

    def finish(self) -> list[str]:
        """Close the file (fsync'd); returns the sensor columns."""
        if self.writer is not None:
            self.writer.close()
            fsync_path(self.path)
            return list(self.fixed or ())
        names = sorted(self.seen)
        check_sensor_names(names)
        schema = _schema(names)
        with pq.ParquetWriter(self.path, schema, compression="zstd") as w:
            for part in self.parts:
                t = pq.read_table(part)
                arrays = [t.column(f.name) if f.name in t.schema.names
                          else pa.nulls(t.num_rows, f.type) for f in schema]
                w.write_table(pa.Table.from_arrays(arrays, schema=schema))
                part.unlink()
        fsync_path(self.path)
        return names

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _write_rows(store: Store, out: Path, sel: Selection, fixed: list[str] | None,
                slots: int, spool: Path, progress: Progress
                ) -> tuple[int, bytes, list[str], list[str], tuple[int, int] | None,
                           list[int]]:
    """The row pass: the Parquet rows and readings.bin; each row's (row + 1, leaf) goes to its
    reading id's slot in the scratch file. The decoding runs on the verifier processes.
    Returns (rows, root, sensors, devices, ts range, the batch entries touched, in order)."""
    tree = merkle.CompactRange()
    n = 0
    devs: list[str] = []
    lo_ts: int | None = None
    hi_ts: int | None = None
    cols: dict[str, list[Any]] = {c: [] for c in (*FIXED_COLUMNS, "leaf", "entry")}
    group: dict[str, list[Any]] = {s: [] for s in fixed or ()}
    touched: set[int] = set()
    scanned = 0
    pwrite = os.pwrite
    groups = _RowGroups(out / DATA_FILE, fixed, spool)
    ctx = Context(0, sel.as_fields(), selection_of, sel)
    ahead: deque[tuple[list[tuple[int, str, int, int, bytes]], Iterator[list[Decoded1]]]] = \
        deque()

    def flush() -> None:
        nonlocal group
        if cols["device"]:
            groups.write(cols, group)
            for c in cols.values():
                c.clear()
            group = {s: [] for s in fixed or ()}

    try:
        with open(out / READINGS_FILE, "wb") as raw, VerifierPool(2) as pool:
            dev_c, seq_c, ts_c, leaf_c, entry_c = (cols[c] for c in (*FIXED_COLUMNS, "leaf",
                                                                      "entry"))
            append = tree.append
            write = raw.write
            chunks = store.provenance_readings(sel.devices, sel.below, READ_CHUNK)
            while True:
                chunk = next(chunks, None)
                if chunk is not None:
                    ahead.append((chunk, pool.iter_chunks(
                        decode_rows, [(c[4], c[3]) for c in chunk], ctx)))
                    if len(ahead) <= 3:
                        continue
                if not ahead:
                    break
                items, results = ahead.popleft()
                scanned += len(items)
                progress.update(scanned)
                k = 0
                for part in results:
                    for keep, dev, seq, ts, data, leaf in part:
                        rid, _d, _s, batch, cose = items[k]
                        k += 1
                        if not keep:
                            continue
                        if fixed is None:
                            for s in data:
                                if s not in group:
                                    group[s] = [None] * len(dev_c)
                        append(leaf)
                        write(reading_record(cose))
                        if not devs or devs[-1] != dev:
                            devs.append(dev)
                        dev_c.append(dev)
                        seq_c.append(seq)
                        if ts is None:
                            ts_c.append(None)
                        else:
                            ts_c.append(ts * 1000)
                            lo_ts = ts if lo_ts is None or ts < lo_ts else lo_ts
                            hi_ts = ts if hi_ts is None or ts > hi_ts else hi_ts
                        for s, col in group.items():
                            v = data.get(s)
                            col.append(None if v is None else float(v))
                        leaf_c.append(leaf)
                        entry_c.append(batch)
                        n += 1
                        pwrite(slots, n.to_bytes(8, "big") + leaf, rid * _SLOT)
                        touched.add(batch)
                        if len(dev_c) >= ROW_GROUP:
                            flush()
            flush()
            _fsync(raw)
        sensors = groups.finish()
    finally:
        groups.close()
    progress.finish()
    frame = (lo_ts, hi_ts) if lo_ts is not None and hi_ts is not None else None
    return n, tree.root(), sensors, devs, frame, sorted(touched)


def _fsync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _write_batches(store: Store, out: Path, slots: int, touched: list[int]) -> list[int]:
    """Pass 3: batches.cbor, batch by batch in ledger order, from the scratch slots of each
    batch's reading ids; returns the batch entries written."""
    with open(out / BATCHES_FILE, "wb") as f:
        for entry in touched:
            f.write(_batch_proof(store, entry, slots).encode())
        _fsync(f)
    return touched


def _batch_proof(store: Store, entry: int, slots: int) -> BatchProof:
    brow = store.batch_row(entry)
    if brow is None:
        raise IntegrityError(f"batch entry {entry} has no batches row",
                             "run 'iot-anchor ledger verify'")
    first, n, root, blob = brow
    nodes = split_nodes(blob)
    raw = os.pread(slots, n * _SLOT, first * _SLOT).ljust(n * _SLOT, b"\0")
    index: list[int] = []
    rows: list[int] = []
    leaves: list[bytes] = []
    for k in range(n):
        rec = raw[k * _SLOT:(k + 1) * _SLOT]
        if rec[:8] != _NONE:
            index.append(k)
            rows.append(int.from_bytes(rec[:8], "big") - 1)
            leaves.append(rec[8:])
    cache: dict[int, list[bytes]] = {}

    def group_leaves(g: int) -> list[bytes]:
        if g not in cache:
            cache[g] = merkle.leaf_hashes(store.cose_range(first + g * GROUP,
                                                           first + min(n, (g + 1) * GROUP)))
        return cache[g]

    def range_root(lo: int, hi: int) -> bytes:
        if lo % GROUP == 0 and (hi % GROUP == 0 or hi == n):
            return merkle.root(nodes[lo // GROUP:-(-hi // GROUP)])
        g = lo // GROUP
        return merkle.range_root(group_leaves(g), lo - g * GROUP, hi - g * GROUP)

    proof = multiproof.multiproof(range_root, index, n)
    if multiproof.root_from_multiproof(leaves, index, n, proof) != root:
        raise IntegrityError(f"the readings of batch entry {entry} do not give its root",
                             "run 'iot-anchor ledger verify'")
    return BatchProof(entry, n, index, rows, b"".join(leaves), b"".join(proof))


def _registry_entries(store: Store, devs: list[str], below: int) -> list[int]:
    wanted = set(devs)
    out = []
    for i, body in store.entries_of_kind("device", below):
        e = decode_entry(body)
        if getattr(e, "dev", None) in wanted:
            out.append(i)
    return out


def _proven(store: Store, i: int, size: int) -> dict[str, Any]:
    body = store.entry_body(i)
    if body is None:
        raise IntegrityError(f"the ledger has no entry {i}", "run 'iot-anchor ledger verify'")
    return {"index": i, "cbor": body.hex(),
            "proof": [h.hex() for h in store.entry_proof(i, size)]}

