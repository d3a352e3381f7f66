"""`iot-anchor mirror URL --data DIR --gateway-key VKEY [--follow]`: a verified replica.

One round (`Mirror.sync`):

1. GET /checkpoint (at most 64 KiB); it must verify with the gateway vkey. Cosignature lines
   are kept (well-formed cosignature/v1 lines; with --witness-key only those that verify).
2. Against the checkpoint the mirror holds (size m, root r): a smaller size is a rollback or a
   fork, the same size with another root a fork; both are named, both notes saved under
   DIR/evidence/ (gateway/tlog/evidence.py), exit 1.
3. Growing to size n: the entry bundles from m on are fetched; entries below m in a shared
   bundle must equal the stored ones; each new entry must decode strictly, name its index and
   chain to the previous one. The mirror's own tree extended by them must give the
   checkpoint's root: then the new tree contains the old one (consistency, proven by the
   mirror's own data). The new hash tiles are fetched and must equal the nodes computed.
   When the root differs, the server's tiles decide: if they do not give its checkpoint's
   root, its data is bad; if they do, and their tree's prefix of size m is not r, it is a
   fork, with the consistency proof from the server's tiles as evidence.
4. In one write transaction: each new entry; a device entry replayed into the registry (the
   rules of `ledger verify`); a batch entry's bundle (GET /batch/<I>, fetched ahead) must hold
   exactly its n readings, hash to its root, and every reading must decode and its ES256
   signature verify against the key the registry gave that device at that entry (on the
   verifier pool), with no (device, seq) twice; chain breaks are recorded as the gateway
   records them. Then the checkpoint and its cosignatures. Anything refused rolls the whole
   transaction back: the replica stays as it was.

Memory: the round's entries (not readings) and a window of batch bundles.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

import aiohttp

from gateway.audit.store_audit import check_readings, readings_context
from gateway.errors import AnchorError, ConfigError
from gateway.ingest.verifier import VerifierPool
from gateway.ledger import merkle, note, tiles
from gateway.ledger.batch import batch_nodes
from gateway.ledger.cosignature import cosignature_lines, parse_witness_vkey
from gateway.ledger.entry import BatchEntry, DeviceEntry, EntryError, decode_entry
from gateway.storage.store import Store
from gateway.tlog.evidence import fork_extra, write_evidence
from gateway.tlog.fetch import FetchError, LogClient
from gateway.wire.cose import decode

T = TypeVar("T")
ZERO = bytes(32)
AHEAD = 8  # batch bundles fetched ahead
PARALLEL = 8  # tiles and entry bundles fetched at once
MAX_ITEM = 2 + 0xFFFF
MAX_READING = 64 * 1024


class Misbehaviour(AnchorError):
    """A fork, a rollback or data that does not hash to the checkpoint: the mirror stops."""

    def __init__(self, what: str, evidence: Path) -> None:
        super().__init__(what, f"evidence saved in {evidence}; check it with 'iot-anchor "
                               f"verify-evidence {evidence} --gateway-key VKEY'")
        self.evidence = evidence


class Refused(AnchorError):
    """Fetched data that cannot be right (truncated, malformed, a bad signature)."""


class Stopped(AnchorError):
    """The round was stopped (SIGTERM, SIGINT) before its commit: nothing of it was stored."""


@dataclass
class RoundResult:
    size: int
    entries: int = 0
    readings: int = 0
    seconds: float = 0.0
    cosignatures: int = 0


@dataclass
class _Held:
    size: int
    root: bytes
    note: str | None
    tree: merkle.CompactRange
    last_hash: bytes


@dataclass
class _Started:
    """A batch whose readings are being verified on the pool."""

    entry: BatchEntry
    cose: list[bytes]
    nodes: list[bytes]
    results: Any  # iterator of the pool's per-chunk results


@dataclass
class _Progress:
    stream: TextIO | None
    total: int = 0
    done: int = 0
    readings: int = 0
    t0: float = field(default_factory=time.monotonic)
    last: float = 0.0

    def show(self, final: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if not final and now - self.last < 0.5:
            return
        self.last = now
        rate = self.readings / max(now - self.t0, 1e-9)
        self.stream.write(f"\rmirror: {self.done:,}/{self.total:,} entries, "
                          f"{self.readings:,} readings ({rate:,.0f}/s)  ")
        if final:
            self.stream.write("\n")
        self.stream.flush()


class Mirror:
    def __init__(self, url: str, data_dir: Path, vkey: str, *, token: str | None = None,
                 witness_keys: list[str] | None = None, workers: int = 2,
                 progress: TextIO | None = None) -> None:
        note.parse_vkey(vkey)
        self.url = url.rstrip("/")
        self.data_dir = Path(data_dir)
        self.vkey = vkey.strip()
        self.name = self.vkey.split("+", 1)[0]
        self.token = token
        self.witnesses = [parse_witness_vkey(v) for v in (witness_keys or [])]
        self.workers = workers
        self.progress = progress
        self._db_pool = ThreadPoolExecutor(1, thread_name_prefix="anchor-mirror")
        self._store: Store | None = None
        self._verifiers: VerifierPool | None = None
        self._ctx_key = itertools.count()
        self.abort = threading.Event()  # set: the round under way stops before its commit

    # -- the store, on its own thread ---------------------------------------------------------

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db_pool, fn, *args)

    def _open(self) -> Store:
        if self._store is None:
            if Store.holds_ledger(self.data_dir):
                store = Store.open(self.data_dir)
                src = store.meta("mirror_of")
                if src is None:
                    store.close()
                    raise ConfigError(f"{self.data_dir} is a gateway's data directory, not a "
                                      "mirror", "give the mirror its own --data DIR")
                if store.vkey() != self.vkey:
                    store.close()
                    raise ConfigError(f"{self.data_dir} mirrors another gateway key",
                                      "give the --gateway-key it was made with, or another "
                                      "--data DIR")
                self._store = store
            else:
                self._store = Store.create_mirror(self.data_dir, self.vkey, self.url)
        return self._store

    def _held(self) -> _Held:
        store = self._open()
        with store.write() as c:  # one consistent view (and the head's own checks)
            head = store.head(c)
        cp = store.latest_checkpoint()
        root = head.tree.root()
        return _Held(head.size, root, cp[1] if cp else None, head.tree, head.last_hash)

    def close(self) -> None:
        self.abort.set()

        def shut() -> None:
            if self._verifiers is not None:
                self._verifiers.close()
            if self._store is not None:
                self._store.close()
        self._db_pool.submit(shut).result()
        self._db_pool.shutdown(wait=True)

    # -- one round ----------------------------------------------------------------------------

    async def sync(self) -> RoundResult:
        t0 = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=120, sock_connect=10, sock_read=60)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=True) as http:
            client = LogClient(http, self.url, self.token)
            raw = await client.get("checkpoint", note.MAX_NOTE_SIZE)
            assert raw is not None
            try:
                served = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise Refused("the server's checkpoint is not UTF-8 text",
                              "the server is not an iot-anchor log") from None
            try:
                cp = note.verify_checkpoint(served, self.vkey)
            except note.NoteError as e:
                raise Refused(f"the server's checkpoint does not verify with the gateway key: "
                              f"{e.what}", "check --gateway-key and the URL") from None
            signed, cosigs = self._split(served)
            held = await self._db(self._held)
            if held.note is not None and cp.size < held.size:
                await self._rollback(held, cp, signed)
            if cp.size == held.size:
                if cp.root != held.root:
                    raise self._misbehaviour("fork", held, signed, f"two different roots for "
                                             f"size {cp.size}")
                n = await self._db(self._more_cosignatures, cp.size, signed, cosigs)
                return RoundResult(cp.size, cosignatures=n, seconds=time.monotonic() - t0)
            entries, new_nodes, tree = await self._entries(client, held, cp, signed)
            await self._check_tiles(client, held, cp, signed, tree, new_nodes)
            loop = asyncio.get_running_loop()
            result = await self._db(self._commit, client, loop, held, entries, tree, signed,
                                    cosigs)
        result.seconds = time.monotonic() - t0
        return result

    def _split(self, served: str) -> tuple[str, dict[str, str]]:
        """The gateway's note (its text and its own signature lines) and the cosignature lines
        kept (by witness vkey, or by "name+keyid" when no witness keys are given)."""
        text, sigs = note.split_note(served)
        kid = note.parse_vkey(self.vkey)[1]
        own = [note.signature_line(n, b) for n, b in sigs if n == self.name and b[:4] == kid]
        signed = text + "\n" + "".join(own)
        if self.witnesses:
            try:
                return signed, cosignature_lines(served, self.witnesses)
            except note.NoteError:
                return signed, {}  # a bad cosignature line: keep none of this round's
        lines = {f"{n}+{b[:4].hex()}": note.signature_line(n, b) for n, b in sigs
                 if (n, b[:4]) != (self.name, kid) and len(b) == 76}
        return signed, lines

    def _more_cosignatures(self, size: int, signed: str, cosigs: dict[str, str]) -> int:
        store = self._open()
        have = set(store.cosignature_lines(size))
        new = {w: ln for w, ln in cosigs.items() if ln not in have}
        for w, ln in new.items():
            store.add_cosignature(size, w, ln)
        return len(new)

    def _misbehaviour(self, kind: str, held: _Held, signed: str, detail: str,
                      extra: dict[str, Any] | None = None) -> Misbehaviour:
        d = write_evidence(self.data_dir, kind, held.note or "", signed, detail, extra)
        names = {"fork": "FORK", "rollback": "ROLLBACK", "bad-data": "BAD DATA"}
        return Misbehaviour(f"{names.get(kind, kind)}: {detail}", d)

    async def _rollback(self, held: _Held, cp: note.Checkpoint, signed: str) -> None:
        def ours() -> tuple[bytes, list[bytes]]:
            store = self._open()
            if cp.size == 0:
                return merkle.EMPTY_ROOT, []
            return store.ledger_root_at(cp.size), store.consistency_proof(cp.size, held.size)

        prefix, proof = await self._db(ours)
        if prefix == cp.root:
            raise self._misbehaviour("rollback", held, signed,
                                     f"the server's tree has size {cp.size}, smaller than the "
                                     f"size {held.size} this mirror holds")
        raise self._misbehaviour("fork", held, signed,
                                 f"the server's checkpoint of size {cp.size} is not a prefix "
                                 f"of the tree of size {held.size} this mirror holds",
                                 fork_extra(prefix, proof))

    async def _gather(self, fns: list[Callable[[], Any]]) -> list[Any]:
        sem = asyncio.Semaphore(PARALLEL)

        async def one(fn: Callable[[], Any]) -> Any:
            async with sem:
                return await fn()

        return list(await asyncio.gather(*(one(f) for f in fns)))

    async def _entries(self, client: LogClient, held: _Held, cp: note.Checkpoint, signed: str
                       ) -> tuple[list[bytes], dict[tuple[int, int], bytes],
                                  merkle.CompactRange]:
        bundles = tiles.tiles_for(cp.size, held.size, entries=True)

        def getter(t: tiles.Tile) -> Callable[[], Any]:
            return lambda: client.get(t.path, t.width * MAX_ITEM)

        datas = await self._gather([getter(t) for t in bundles])
        tree = held.tree.copy()
        prev = held.last_hash
        new_nodes: dict[tuple[int, int], bytes] = {}
        entries: list[bytes] = []
        differs: str | None = None  # the server's history is not ours: diagnose
        for t, data in zip(bundles, datas, strict=True):
            if differs is not None:
                break
            try:
                bodies = tiles.decode_bundle(data, t.width)
            except tiles.TileError as te:
                raise Refused(f"entry bundle {t.path}: {te.what}", "the server is broken or "
                              "hostile; nothing was stored") from None
            lo = t.index * tiles.WIDTH
            old = [b for k, b in enumerate(bodies) if lo + k < held.size]
            if old:
                mine = await self._db(self._bodies, lo, lo + len(old))
                if mine != old:
                    k = next(k for k in range(len(old)) if k >= len(mine) or mine[k] != old[k])
                    differs = f"entry {lo + k} differs from the one this mirror holds"
                    break
            for k, body in enumerate(bodies):
                i = lo + k
                if i < held.size:
                    continue
                try:
                    ent = decode_entry(body)
                except EntryError as err:
                    raise Refused(f"entry {i} from {t.path} does not decode: {err.what}",
                                  "the server is broken or hostile; nothing was stored") from None
                if ent.i != i or ent.prev != prev:
                    differs = (f"entry {i} from {t.path} names index {ent.i} or does not chain "
                               "to the entry before it")
                    break
                prev = hashlib.sha256(body).digest()
                for lv, ix, h in tree.append(merkle.leaf_hash(body)):
                    if lv % tiles.HEIGHT == 0:
                        new_nodes[(lv, ix)] = h
                entries.append(body)
        if differs is not None or tree.root() != cp.root:
            await self._diagnose(client, held, cp, signed,
                                 differs or "the entries do not hash to the checkpoint's root")
        return entries, new_nodes, tree

    def _bodies(self, lo: int, hi: int) -> list[bytes]:
        return self._open().entry_bodies(lo, hi)

    async def _fetch_tiles(self, client: LogClient, wanted: list[tiles.Tile]
                           ) -> dict[tuple[int, int], list[bytes]]:
        def getter(t: tiles.Tile) -> Callable[[], Any]:
            return lambda: client.get(t.path, tiles.TILE_BYTES)

        datas = await self._gather([getter(t) for t in wanted])
        out: dict[tuple[int, int], list[bytes]] = {}
        for t, data in zip(wanted, datas, strict=True):
            try:
                assert t.level is not None
                out[(t.level, t.index)] = tiles.split_tile(data, t.width)
            except tiles.TileError as e:
                raise Refused(f"tile {t.path}: {e.what}", "the server is broken or hostile; "
                              "nothing was stored") from None
        return out

    async def _diagnose(self, client: LogClient, held: _Held, cp: note.Checkpoint, signed: str,
                        what: str) -> None:
        """The entries disagree with the checkpoint or with ours: do the server's tiles give
        its checkpoint (then: a fork, or bad bundles), or not (bad data)?"""
        tn = tiles.TileNodes(cp.size, {})
        nodes = tiles.range_nodes(0, cp.size)
        asked: list[tuple[int, int]] = []
        if held.size:
            nodes += tiles.range_nodes(0, held.size)

            def record(lo: int, hi: int) -> bytes:
                asked.extend(tiles.range_nodes(lo, hi))
                return ZERO

            merkle.consistency_proof_with(record, held.size, cp.size)
        tn.tiles = await self._fetch_tiles(client, tn.needed(nodes + asked))
        if merkle.range_root_from_nodes(tn.node, 0, cp.size) != cp.root:
            raise self._misbehaviour("bad-data", held, signed,
                                     f"the server's tiles do not hash to its checkpoint of "
                                     f"size {cp.size} ({what})")
        if held.size:
            prefix = merkle.range_root_from_nodes(tn.node, 0, held.size)
            if prefix != held.root:
                proof = merkle.consistency_proof_with(
                    lambda lo, hi: merkle.range_root_from_nodes(tn.node, lo, hi),
                    held.size, cp.size)
                raise self._misbehaviour(
                    "fork", held, signed,
                    f"the server's tree of size {cp.size} does not contain the tree of size "
                    f"{held.size} this mirror holds ({what})", fork_extra(prefix, proof))
        raise self._misbehaviour("bad-data", held, signed,
                                 f"the server's entry bundles do not match its own tiles "
                                 f"({what})")

    async def _check_tiles(self, client: LogClient, held: _Held, cp: note.Checkpoint,
                           signed: str, tree: merkle.CompactRange,
                           new_nodes: dict[tuple[int, int], bytes]) -> None:
        wanted = tiles.tiles_for(cp.size, held.size)
        got = await self._fetch_tiles(client, wanted)
        for t in wanted:
            assert t.level is not None
            lo = t.index * tiles.WIDTH
            level = tiles.HEIGHT * t.level
            hashes = got[(t.level, t.index)]
            old = [k for k in range(t.width) if (level, lo + k) not in new_nodes]
            if old:
                mine = await self._db(self._open().tile_hashes, level, lo, lo + len(old))
                if mine != hashes[:len(old)]:
                    raise self._misbehaviour("bad-data", held, signed,
                                             f"tile {t.path} differs from the entries' tree")
            for k in range(len(old), t.width):
                if new_nodes.get((level, lo + k)) != hashes[k]:
                    raise self._misbehaviour("bad-data", held, signed,
                                             f"tile {t.path} differs from the tree of the "
                                             "entries, which gives the checkpoint's root")

    # -- the commit (on the store's thread) ---------------------------------------------------

    def _commit(self, client: LogClient, loop: asyncio.AbstractEventLoop, held: _Held,
                entries: list[bytes], tree: merkle.CompactRange, signed: str,
                cosigs: dict[str, str]) -> RoundResult:
        store = self._open()
        decoded = [decode_entry(b) for b in entries]
        batches = [e for e in decoded if isinstance(e, BatchEntry)]
        prog = _Progress(self.progress, total=len(entries))
        fetches: dict[int, Future[bytes | None]] = {}
        order = iter(batches)

        def ahead() -> None:
            while len(fetches) < AHEAD:
                b = next(order, None)
                if b is None:
                    return
                fetches[b.i] = asyncio.run_coroutine_threadsafe(
                    client.get(f"batch/{b.i}", b.n * (2 + MAX_READING)), loop)

        history = store.key_history()
        status = {d.id: d.status for d in store.devices()}
        top = {d.id: (d.last_seq if d.last_seq is not None else -1) for d in store.devices()}
        last: dict[str, tuple[int, bytes]] = {}
        readings = 0
        ahead()
        try:
            with store.write() as c:
                head = store.head(c)
                if head.size != held.size:
                    raise Refused("the mirror's data directory changed during the round",
                                  "run one mirror per data directory")
                ctx: Any = None
                started: _Started | None = None  # the next batch, handed to the pool early

                def start(b: BatchEntry) -> _Started:
                    nonlocal ctx
                    fut = fetches.pop(b.i)
                    ahead()
                    data = fut.result()
                    assert data is not None
                    if ctx is None:
                        ctx = readings_context(next(self._ctx_key), history)
                    return self._start_batch(b, data, ctx)

                for pos, (body, e) in enumerate(zip(entries, decoded, strict=True)):
                    if self.abort.is_set():
                        raise Stopped("the mirror was stopped during a round",
                                      "nothing of that round was stored; run it again")
                    a = store.append_entry(c, head, e.kind, body)
                    head = type(head)(a.index + 1, a.hash, head.tree)
                    if isinstance(e, DeviceEntry):
                        self._device(store, c, e, history, status)
                        ctx = None  # the key history changed
                    elif isinstance(e, BatchEntry):
                        st = started if started is not None else start(e)
                        started = None
                        # the next entry is a batch too (same key history): its readings go
                        # to the pool now, so the workers verify while this one is stored
                        nxt = decoded[pos + 1] if pos + 1 < len(decoded) else None
                        if isinstance(nxt, BatchEntry):
                            started = start(nxt)
                        readings += self._finish_batch(store, c, st, top, last)
                        prog.readings = readings
                    prog.done += 1
                    prog.show()
                store.mirror_checkpoint(c, head.tree, signed, cosigs)
        finally:
            for f in fetches.values():
                f.cancel()
        prog.show(final=True)
        return RoundResult(tree.size, len(entries), readings, cosignatures=len(cosigs))

    def _device(self, store: Store, c: Any, e: DeviceEntry,
                history: dict[str, list[tuple[bytes, int, int | None]]],
                status: dict[str, str]) -> None:
        hist = history.setdefault(e.dev, [])
        active = hist and hist[-1][2] is None
        if e.action == "add":
            if hist:
                raise Refused(f"entry {e.i} adds device {e.dev!r} a second time",
                              "the ledger is not one iot-anchor writes; nothing was stored")
            hist.append((e.key, e.i, None))
            status[e.dev] = "active"
        elif not active:
            raise Refused(f"entry {e.i}: {e.action} of device {e.dev!r}, which is not active",
                          "nothing was stored")
        else:
            if e.action == "revoke" and hist[-1][0] != e.key:
                raise Refused(f"entry {e.i} revokes a key of {e.dev!r} that is not its current "
                              "one", "nothing was stored")
            hist[-1] = (hist[-1][0], hist[-1][1], e.i)
            if e.action == "rotate":
                hist.append((e.key, e.i, None))
            else:
                status[e.dev] = "revoked"
        store.mirror_device(c, e.i, e.dev, e.key, e.action)

    def _verifier(self) -> VerifierPool:
        if self._verifiers is None:
            self._verifiers = VerifierPool(self.workers)
            if self.workers > 1:
                self._verifiers.start()
        return self._verifiers

    def _start_batch(self, e: BatchEntry, data: bytes, ctx: Any) -> _Started:
        """Check a batch bundle against its entry and hand its readings to the pool."""
        try:
            cose = tiles.decode_bundle(data, e.n)
        except tiles.TileError as err:
            raise Refused(f"batch bundle batch/{e.i}: {err.what}", "the server is broken or "
                          "hostile; nothing was stored") from None
        leaves = merkle.leaf_hashes(cose)
        nodes = batch_nodes(leaves)
        if merkle.root(nodes) != e.root:
            raise Refused(f"batch bundle batch/{e.i} does not hash to its entry's root",
                          "the server is broken or hostile; nothing was stored")
        work = [(m, e.i) for m in cose]
        return _Started(e, cose, nodes, self._verifier().iter_chunks(check_readings, work, ctx))

    def _finish_batch(self, store: Store, c: Any, st: _Started, top: dict[str, int],
                      last: dict[str, tuple[int, bytes]]) -> int:
        e, cose, nodes = st.entry, st.cose, st.nodes
        rows: list[tuple[str, int, bytes]] = []
        seen: set[tuple[str, int]] = set()
        k = 0
        for chunk in st.results:
            for _leaf, problem, digest, prev, seq, dev in chunk:
                if problem is not None:
                    raise Refused(f"reading {k} of batch entry {e.i}: {problem}",
                                  "the gateway anchored a reading that does not verify; "
                                  "nothing was stored")
                if (dev, seq) in seen or (seq <= top.get(dev, -1)
                                          and store.stored_reading(c, dev, seq) is not None):
                    raise Refused(f"{dev!r} seq {seq} is anchored twice (batch entry {e.i})",
                                  "nothing was stored")
                seen.add((dev, seq))
                self._chain(store, c, dev, seq, prev, digest, top, last)
                rows.append((dev, seq, cose[k]))
                top[dev] = max(top.get(dev, -1), seq)
                k += 1
        store.mirror_batch(c, e.i, e.root, nodes, rows)
        return len(rows)

    def _chain(self, store: Store, c: Any, dev: str, seq: int, prev: bytes, digest: bytes,
               top: dict[str, int], last: dict[str, tuple[int, bytes]]) -> None:
        """Record chain breaks where `ledger verify` looks for them: seq 0 whose prev is not
        zero, seq whose prev is not the hash of seq-1, and seq+1 (stored before) whose prev is
        not this reading's hash."""
        before = last.get(dev)
        if seq == 0:
            if prev != ZERO:
                store.mirror_event(c, "chain_break", dev, 0, "seq 0 with a prev that is not "
                                   "zero (found by the mirror)")
        else:
            want = before[1] if before is not None and before[0] == seq - 1 else None
            if want is None:
                m = store.stored_reading(c, dev, seq - 1)
                want = hashlib.sha256(m).digest() if m is not None else None
            if want is not None and want != prev:
                store.mirror_event(c, "chain_break", dev, seq, "prev is not the hash of the "
                                   "reading before (found by the mirror)")
        if seq < top.get(dev, -1):
            nxt = store.stored_reading(c, dev, seq + 1)
            if nxt is not None:
                if decode(nxt, max(len(nxt), 1)).prev != digest:
                    store.mirror_event(c, "chain_break", dev, seq + 1, "prev is not the hash of "
                                       "the reading before (found by the mirror)")
        if before is None or seq > before[0]:
            last[dev] = (seq, digest)


async def follow(m: Mirror, interval: float, stop: asyncio.Event,
                 say: Callable[[str], None]) -> None:
    """Sync, then poll every `interval` s; a server that is down is retried with backoff
    (interval doubling to 60 s). Misbehaviour and refusals end it (raised)."""
    failures = 0
    while not stop.is_set():
        delay = interval
        task = asyncio.ensure_future(m.sync())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not task.done():  # stopping in the middle of a round: it is rolled back
            m.abort.set()
            with contextlib.suppress(Exception):
                await task
            return
        try:
            r = task.result()
            if failures:
                say(f"the log is reachable again (size {r.size})")
            failures = 0
            if r.entries or r.cosignatures:
                say(f"size {r.size}: {r.entries} new entries, {r.readings} new readings, "
                    f"{r.cosignatures} cosignatures")
        except FetchError as e:
            failures += 1
            delay = min(60.0, interval * 2 ** min(failures, 6))
            say(f"{e.explain()}; retrying in {delay:.0f} s")
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            pass


def stderr_if_tty() -> TextIO | None:
    return sys.stderr if sys.stderr.isatty() else None
