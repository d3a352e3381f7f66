"""`iot-anchor dataset verify OUT --gateway-key VKEY [--checkpoint FILE [--consistency PROOF]]`:
offline, no database, no network. It trusts only VKEY (and FILE, when given; PROOF, from
`iot-anchor ledger prove`, is checked, not trusted) and checks, in this order,
stopping at the first failure, which it names (`DatasetFailure`: the file, the row as
(device, seq), what differs):

1. croissant.json lists every file of OUT (no file missing, none extra) with its sha256;
2. provenance/ledger.json: its checkpoint is signed by VKEY (and equals FILE's tree when the
   sizes match, or is consistent with it by PROOF when they differ), every entry decodes
   strictly and is included in the checkpoint's tree; the registry entries replay into each
   device's key history; croissant.json names the dataset entry and its root;
3. data/readings.parquet has the columns of the format (gateway/provenance/dataset.py);
4. provenance/batches.cbor: each batch's rows (their leaf hashes) and shared proof give the
   root of a proven batch entry; each row is listed once;
5. row by row (signatures on the verifier processes): the row's COSE message decodes, its
   signature verifies against the key its device had at the row's batch entry, the row equals
   its payload (device, seq, ts, every sensor value), its leaf and entry are what the batch
   proofs put at this row, rows are in strict (device, seq) order and in the selection;
6. the row count and the root over the rows equal the dataset entry's, and so do the data
   files' digests.

Memory does not grow with the rows: they are read in record batches, and the batch proofs'
leaves are kept in a scratch file indexed by row (40 bytes a row), not in memory.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, TextIO

import cbor2
import pyarrow as pa
import pyarrow.parquet as pq

from gateway.errors import AnchorError
from gateway.ingest.verifier import Context, VerifierPool
from gateway.ledger import merkle, multiproof, note
from gateway.ledger.cosignature import parse_add_checkpoint
from gateway.ledger.entry import (
    BatchEntry,
    DeviceEntry,
    Entry,
    EntryError,
    RecordEntry,
    decode_entry,
)
from gateway.ledger.provenance import DATASET
from gateway.provenance import rowcheck
from gateway.provenance.dataset import (
    BATCHES_FILE,
    DATA_FILE,
    LEDGER_FILE,
    LEDGER_FORMAT,
    METADATA_FILE,
    READINGS_FILE,
    BatchProof,
    Selection,
)
from gateway.provenance.export import Progress
from gateway.provenance.files import sha256_file

BATCH_ROWS = 8192
_SLOT = 40  # scratch record per row: leaf (32) || batch entry (8, big-endian)
_EMPTY = bytes(_SLOT)
_HINT = "the dataset was altered after export; get an intact copy or export it again"


class DatasetFailure(AnchorError):
    """The dataset does not verify: `what` names the file, the row and what differs."""

    def __init__(self, what: str, hint: str = _HINT) -> None:
        super().__init__(what, hint)


@dataclass
class VerifyResult:
    name: str
    rows: int
    entry: int
    root: bytes
    tree_size: int
    seconds: float


def _fail(what: str, hint: str = _HINT) -> DatasetFailure:
    return DatasetFailure(what, hint)


# 1 ---------------------------------------------------------------------------------------------


def _metadata(out: Path) -> dict[str, Any]:
    path = out / METADATA_FILE
    if not out.is_dir():
        raise _fail(f"{out} is not a directory", "give the directory 'dataset export' wrote")
    try:
        meta = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise _fail(f"{METADATA_FILE} is missing: {out} is not a finished export",
                    "export the dataset again") from None
    except OSError as e:
        raise _fail(f"{METADATA_FILE} cannot be read: {e.strerror}",
                    "check the file's permissions") from None
    except ValueError as e:
        raise _fail(f"{METADATA_FILE} is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise _fail(f"{METADATA_FILE} is not a JSON object")
    return meta


def _digests(out: Path, meta: dict[str, Any]) -> dict[str, bytes]:
    """Step 1: {relative path: sha256} of every file, as checked against croissant.json."""
    listed: dict[str, str] = {}
    dist = meta.get("distribution")
    if not isinstance(dist, list):
        raise _fail(f"{METADATA_FILE} has no distribution list")
    for item in dist:
        if not isinstance(item, dict) or not isinstance(item.get("contentUrl"), str) or \
                not isinstance(item.get("sha256"), str):
            raise _fail(f"{METADATA_FILE}: a distribution entry lacks contentUrl or sha256")
        p = PurePosixPath(item["contentUrl"])
        if p.is_absolute() or ".." in p.parts or str(p) in listed:
            raise _fail(f"{METADATA_FILE}: distribution path {item['contentUrl']!r} is not a "
                        "relative path inside the dataset, or is listed twice")
        listed[str(p)] = item["sha256"]
    present = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                     if p.is_file() or p.is_symlink())
    for f in present:
        if f != METADATA_FILE and f not in listed:
            raise _fail(f"{f}: the file is not in {METADATA_FILE}'s distribution",
                        "remove it, or get an intact copy of the dataset")
    out_digests: dict[str, bytes] = {}
    for f in (BATCHES_FILE, DATA_FILE, LEDGER_FILE, READINGS_FILE, *sorted(listed)):
        if f in out_digests:
            continue
        if f not in listed:
            raise _fail(f"{f}: missing from {METADATA_FILE}'s distribution")
        path = out / f
        if path.is_symlink() or not path.is_file():
            raise _fail(f"{f}: the file is missing (or not a regular file)")
        got = sha256_file(path)
        if got.hex() != listed[f].lower():
            raise _fail(f"{f}: sha256 {got.hex()} differs from {METADATA_FILE}'s "
                        f"{listed[f]}")
        out_digests[f] = got
    return out_digests


# 2 ---------------------------------------------------------------------------------------------


@dataclass
class _Ledger:
    size: int
    root: bytes
    dataset: RecordEntry
    batches: dict[int, BatchEntry]
    keys: rowcheck.KeyHistory


def _ledger(out: Path, vkey: str, checkpoint: str | None,
            consistency: str | None = None) -> _Ledger:
    where = LEDGER_FILE
    try:
        obj = json.loads((out / where).read_bytes())
    except (OSError, ValueError) as e:
        raise _fail(f"{where} cannot be read as JSON ({e})") from None
    if not isinstance(obj, dict) or obj.get("version") != LEDGER_FORMAT:
        raise _fail(f"{where} is not a version-{LEDGER_FORMAT} ledger proof")
    try:
        cp = note.verify_checkpoint(str(obj.get("checkpoint")), vkey)
    except AnchorError as e:
        raise _fail(f"{where}: the checkpoint does not verify with the gateway key: {e.what}",
                    "check --gateway-key; otherwise the provenance was altered or comes "
                    "from another gateway") from None
    if obj.get("size") != cp.size:
        raise _fail(f"{where}: size {obj.get('size')!r} is not the checkpoint's {cp.size}")
    if checkpoint is not None:
        _consistent(checkpoint, vkey, cp, consistency)
    entries: dict[int, Entry] = {}
    items = obj.get("entries")
    if not isinstance(items, list):
        raise _fail(f"{where} has no entries list")
    for k, item in enumerate(items):
        try:
            i, body = item["index"], bytes.fromhex(item["cbor"])
            proof = [bytes.fromhex(h) for h in item["proof"]]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise _fail(f"{where}: entries[{k}] is not {{index, cbor, proof}}") from None
        try:
            ent = decode_entry(body)
        except EntryError as err:
            raise _fail(f"{where}: entry {i} does not decode: {err.what}") from None
        if ent.i != i or i in entries:
            raise _fail(f"{where}: entries[{k}] says index {i!r}, the entry is {ent.i}")
        try:
            merkle.verify_inclusion(merkle.leaf_hash(body), i, cp.size, proof, cp.root)
        except merkle.ProofError as err:
            raise _fail(f"{where}: entry {i} ({ent.kind}) is not in the checkpoint's tree: "
                        f"{err.what}") from None
        entries[i] = ent
    ds = entries.get(obj.get("dataset"))  # type: ignore[arg-type]
    if not isinstance(ds, RecordEntry) or ds.kind != DATASET:
        raise _fail(f"{where}: 'dataset' does not name a proven dataset entry")
    devices = [e for _, e in sorted(entries.items()) if isinstance(e, DeviceEntry)]
    keys, problems = rowcheck.replay(devices)
    if problems:
        raise _fail(f"{where}: {problems[0]}")
    batches = {i: e for i, e in entries.items() if isinstance(e, BatchEntry)}
    return _Ledger(cp.size, cp.root, ds, batches, keys)


def _consistent(path: str, vkey: str, cp: note.Checkpoint, proof_path: str | None) -> None:
    """The provenance's checkpoint `cp` against the trusted one in `path`: the same root at
    the same size, else an RFC 6962 consistency proof between the two sizes (`proof_path`:
    a C2SP tlog-witness add-checkpoint body, old size, proof lines, the larger checkpoint,
    as `iot-anchor ledger prove` writes it)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(f"--checkpoint {path} cannot be read ({e})",
                    "pass a checkpoint note file") from None
    try:
        mine = note.verify_checkpoint(text, vkey)
    except AnchorError as e:
        raise _fail(f"--checkpoint {path} does not verify with the gateway key: {e.what}",
                    "pass a checkpoint this gateway signed") from None
    if mine.size == cp.size:
        if mine.root != cp.root:
            raise _fail(f"{LEDGER_FILE}: the checkpoint of size {cp.size} has root "
                        f"{cp.root.hex()}, the one in {path} {mine.root.hex()}: the gateway "
                        "signed two different trees of the same size",
                        "keep both notes: they prove the gateway misbehaved")
        return
    lo, hi = (mine, cp) if mine.size < cp.size else (cp, mine)
    if proof_path is None:
        raise _fail(f"--checkpoint {path} has size {mine.size}, the provenance's checkpoint "
                    f"{cp.size}: consistency between two sizes needs a consistency proof",
                    f"make one on any copy of the log (the gateway or a mirror): 'iot-anchor "
                    f"ledger prove --from {lo.size} --to {hi.size} > PROOF', and pass "
                    "--consistency PROOF")
    try:
        body = Path(proof_path).read_bytes()
    except OSError as e:
        raise _fail(f"--consistency {proof_path} cannot be read ({e.strerror})",
                    "pass the file 'iot-anchor ledger prove' wrote") from None
    try:
        got = parse_add_checkpoint(body)
        signed = note.verify_checkpoint(got.checkpoint, vkey)
    except AnchorError as e:
        raise _fail(f"--consistency {proof_path} is not a consistency proof of this gateway: "
                    f"{e.what}", "pass the file 'iot-anchor ledger prove' wrote") from None
    if got.old != lo.size or signed.size != hi.size:
        raise _fail(f"--consistency {proof_path} goes from size {got.old} to {signed.size}, "
                    f"not from {lo.size} to {hi.size}",
                    f"make it with 'iot-anchor ledger prove --from {lo.size} --to {hi.size}'")
    if signed.root != hi.root:
        raise _fail(f"--consistency {proof_path}: its checkpoint of size {hi.size} has root "
                    f"{signed.root.hex()}, the trusted one {hi.root.hex()}: the gateway signed "
                    "two different trees of the same size",
                    "keep both notes: they prove the gateway misbehaved")
    try:
        merkle.verify_consistency(lo.size, hi.size, got.proof, lo.root, hi.root)
    except AnchorError as e:
        raise _fail(f"{LEDGER_FILE}: the checkpoint of size {cp.size} is not consistent with "
                    f"the one in {path} (size {mine.size}): {e.what}",
                    "the log was forked or rewritten between the two sizes, or the proof is "
                    "not for these checkpoints") from None


def _croissant_names(meta: dict[str, Any], ds: RecordEntry) -> None:
    gen = meta.get("prov:wasGeneratedBy")
    if not isinstance(gen, dict) or gen.get("iot:entry") != ds.i or \
            gen.get("iot:root") != ds.fields["root"].hex():
        raise _fail(f"{METADATA_FILE}: prov:wasGeneratedBy does not name dataset entry {ds.i} "
                    f"with root {ds.fields['root'].hex()}")


# 3 ---------------------------------------------------------------------------------------------


def _columns(pf: pq.ParquetFile, sel: Selection) -> list[str]:
    schema = pf.schema_arrow
    names = schema.names
    want_head = [("device", pa.string()), ("seq", pa.int64()),
                 ("ts", pa.timestamp("ms", tz="UTC"))]
    want_tail = [("leaf", pa.binary(32)), ("entry", pa.int64())]
    if len(names) < 5 or [(f.name, f.type) for f in schema][:3] != want_head or \
            [(f.name, f.type) for f in schema][-2:] != want_tail:
        raise _fail(f"{DATA_FILE}: the columns {names} are not device, seq, ts, the sensors, "
                    "leaf, entry with their types")
    sensors = names[3:-2]
    for f in list(schema)[3:-2]:
        if f.type != pa.float64():
            raise _fail(f"{DATA_FILE}: sensor column {f.name!r} is {f.type}, not double")
    if sensors != sorted(set(sensors)) or (sel.sensors and tuple(sensors) != sel.sensors):
        raise _fail(f"{DATA_FILE}: the sensor columns {sensors} are not the selection's")
    return sensors


# 4 ---------------------------------------------------------------------------------------------


def _cbor_sequence(f: BinaryIO, size: int) -> Iterator[Any]:
    dec = cbor2.CBORDecoder(f)
    while f.tell() < size:
        try:
            yield dec.decode()
        except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError) as e:
            raise _fail(f"{BATCHES_FILE}: not a CBOR sequence at byte {f.tell()} ({e})") from None


def _batch_proofs(out: Path, led: _Ledger, rows: int, slots: int) -> tuple[int, str | None]:
    """Step 4: check every batch proof; store each listed row's leaf and entry in the slot
    file. Returns (rows listed, the first listing beyond the data's rows, if any)."""
    listed = 0
    beyond: str | None = None
    last = -1
    path = out / BATCHES_FILE
    with open(path, "rb") as f:
        for k, obj in enumerate(_cbor_sequence(f, path.stat().st_size)):
            bp = BatchProof.from_obj(obj, f"{BATCHES_FILE} record {k}")
            b = led.batches.get(bp.entry)
            if b is None:
                raise _fail(f"{BATCHES_FILE} record {k}: entry {bp.entry} is not a batch entry "
                            f"proven in {LEDGER_FILE}")
            if bp.entry <= last:
                raise _fail(f"{BATCHES_FILE} record {k}: entry {bp.entry} is not after {last}")
            last = bp.entry
            if bp.n != b.n:
                raise _fail(f"{BATCHES_FILE} record {k}: n {bp.n} is not batch entry "
                            f"{b.i}'s {b.n}")
            leaves = bp.leaf_list()
            try:
                root = multiproof.root_from_multiproof(leaves, bp.index, b.n, bp.proof_list())
            except merkle.ProofError as e:
                raise _fail(f"{BATCHES_FILE} record {k} (batch entry {b.i}): {e.what}") from None
            if root != b.root:
                raise _fail(f"{BATCHES_FILE} record {k}: its rows and proof do not give the "
                            f"root of batch entry {b.i}")
            tag = b.i.to_bytes(8, "big")
            for row, leaf in zip(bp.row, leaves, strict=True):
                listed += 1
                if not 0 <= row < rows:
                    beyond = beyond or (f"{BATCHES_FILE}: batch entry {b.i} lists row {row}, "
                                        f"the data has {rows} rows")
                    continue
                if os.pread(slots, _SLOT, row * _SLOT) != _EMPTY:
                    raise _fail(f"{BATCHES_FILE}: row {row} is listed twice")
                os.pwrite(slots, leaf + tag, row * _SLOT)
    return listed, beyond


# 5 ---------------------------------------------------------------------------------------------


def _messages(out: Path) -> Iterator[bytes]:
    path = out / READINGS_FILE
    with open(path, "rb", buffering=1 << 20) as f:
        while True:
            head = f.read(4)
            if not head:
                return
            n = int.from_bytes(head, "big")
            body = f.read(n) if len(head) == 4 and n <= 1 << 20 else b""
            if len(head) != 4 or len(body) != n or not n:
                raise _fail(f"{READINGS_FILE}: a record is cut short or has a bad length")
            yield body


def _rows(pf: pq.ParquetFile, sensors: list[str]) -> Iterator[list[tuple[Any, ...]]]:
    batches = pf.iter_batches(batch_size=BATCH_ROWS)
    while True:
        try:
            rb = next(batches, None)
            if rb is None:
                return
            cols = [rb.column(0).to_pylist(), rb.column(1).to_pylist(),
                    rb.column(2).cast(pa.int64()).to_pylist(),
                    *[rb.column(3 + j).to_pylist() for j in range(len(sensors))],
                    rb.column(rb.num_columns - 2).to_pylist(),
                    rb.column(rb.num_columns - 1).to_pylist()]
        except (OSError, pa.ArrowException) as e:
            raise _fail(f"{DATA_FILE} cannot be read ({e})") from None
        yield list(zip(*cols, strict=True))


def _name(r: int, dev: Any, seq: Any) -> str:
    return f"{DATA_FILE} row {r} ({dev!r}, {seq})"


def _check_slot(r: int, row: tuple[Any, ...], leaf: bytes, slot: bytes,
                prev: tuple[str, int] | None) -> None:
    """The row against what the batch proofs put at its position, and the row order."""
    dev, seq, entry = row[0], row[1], row[-1]
    where = _name(r, dev, seq)
    if slot == _EMPTY:
        raise _fail(f"{where}: no batch proof in {BATCHES_FILE} lists this row")
    if slot[:32] != leaf:
        raise _fail(f"{where}: the batch proofs anchored another message at this row: a row "
                    "was dropped, added, duplicated or moved at or before it")
    if int.from_bytes(slot[32:], "big") != entry:
        raise _fail(f"{where}: entry is {entry}, its batch proof is batch entry "
                    f"{int.from_bytes(slot[32:], 'big')}")
    if prev is not None and (dev, seq) <= prev:
        raise _fail(f"{where}: comes after {prev}: rows must be in strict (device, seq) order")


def verify_dataset(out: Path, vkey: str, checkpoint: str | None = None, *,
                   consistency: str | None = None, workers: int = 2,
                   progress_stream: TextIO | None = None) -> VerifyResult:
    t0 = time.perf_counter()
    meta = _metadata(out)
    digests = _digests(out, meta)
    led = _ledger(out, vkey, checkpoint, consistency)
    ds = led.dataset
    _croissant_names(meta, ds)
    sel = Selection.from_fields(ds.fields["selection"])
    try:
        pf = pq.ParquetFile(out / DATA_FILE)
    except (OSError, pa.ArrowException) as e:
        raise _fail(f"{DATA_FILE} is not a Parquet file ({e})") from None
    sensors = _columns(pf, sel)
    nrows = pf.metadata.num_rows
    with tempfile.TemporaryFile(prefix="iot-anchor-verify-") as scratch:
        slots = scratch.fileno()
        os.ftruncate(slots, nrows * _SLOT)
        _listed, beyond = _batch_proofs(out, led, nrows, slots)
        n, root = _scan(out, pf, sensors, sel, led, slots, nrows, workers, progress_stream)
    if beyond:
        raise _fail(beyond)
    if n != ds.fields["rows"]:
        raise _fail(f"{DATA_FILE}: {n} rows, dataset entry {ds.i} says {ds.fields['rows']}")
    if root != ds.fields["root"]:
        raise _fail(f"{DATA_FILE}: the root over the rows {root.hex()} is not dataset entry "
                    f"{ds.i}'s {ds.fields['root'].hex()}")
    anchored = {f["path"]: f["sha256"] for f in ds.fields["files"]}
    data_files = sorted(f for f in digests if f.startswith("data/"))
    if data_files != sorted(anchored):
        raise _fail(f"data files {data_files} are not dataset entry {ds.i}'s "
                    f"{sorted(anchored)}")
    for f, d in anchored.items():
        if digests[f] != d:
            raise _fail(f"{f}: sha256 {digests[f].hex()} is not the one anchored in dataset "
                        f"entry {ds.i} ({d.hex()})")
    return VerifyResult(ds.fields["name"], n, ds.i, root, led.size, time.perf_counter() - t0)


def _scan(out: Path, pf: pq.ParquetFile, sensors: list[str], sel: Selection, led: _Ledger,
          slots: int, nrows: int, workers: int, stream: TextIO | None) -> tuple[int, bytes]:
    progress = Progress("verifying rows", nrows, stream)
    value = (led.keys, sensors, sel.as_fields())
    ctx = Context(0, value, rowcheck.prepare_rows, rowcheck.prepare_rows(value))
    msgs = _messages(out)
    tree = merkle.CompactRange()
    prev: tuple[str, int] | None = None
    r = 0
    read = 0
    with VerifierPool(workers) as pool:
        if nrows > 4 * BATCH_ROWS:
            pool.start()
        ahead: tuple[list[tuple[Any, ...]], Iterator[list[tuple[bytes, str | None]]]] | None = \
            None
        batches = _rows(pf, sensors)
        while True:
            rows = next(batches, None)
            started = None
            if rows is not None:
                work = []
                for row in rows:
                    cose = next(msgs, None)
                    if cose is None:
                        raise _fail(f"{_name(read, row[0], row[1])}: {READINGS_FILE} has no "
                                    "COSE message for it")
                    read += 1
                    work.append((cose, row))
                started = (rows, pool.iter_chunks(rowcheck.check_rows, work, ctx))
            if ahead is not None:
                arows, results = ahead
                k = 0
                base = r
                raw = os.pread(slots, len(arows) * _SLOT, base * _SLOT)
                for chunk in results:
                    for leaf, problem in chunk:
                        row = arows[k]
                        if problem is not None:
                            raise _fail(f"{_name(r, row[0], row[1])}: {problem}")
                        _check_slot(r, row, leaf, raw[k * _SLOT:(k + 1) * _SLOT], prev)
                        tree.append(leaf)
                        prev = (row[0], row[1])
                        k += 1
                        r += 1
                progress.update(r)
            ahead = started
            if ahead is None:
                break
    progress.finish()
    extra = next(msgs, None)
    if extra is not None:
        raise _fail(f"{READINGS_FILE}: holds more messages than {DATA_FILE} has rows "
                    f"({nrows})")
    return r, tree.root()
