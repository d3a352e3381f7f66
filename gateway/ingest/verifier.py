"""ES256 verification (P-256, SHA-256, 64-byte r||s) on a pool of worker processes.

`cryptography` releases the GIL while it verifies, so a pool of threads verifies in parallel,
and that is what the issue sketched. Measured on this 2-core machine (docs/performance.md), it
is not enough: the Python around each signature (decoding the message, the two SHA-256 hashes,
splitting r||s) holds the GIL for about 9 us per message, and with two threads and the
pipeline's own thread all wanting it, every one of the 60 us verifications ends in a wait for
the GIL. Decode-and-verify on two threads ran at 0.80 of a bare two-thread verify loop; the same
work in two worker processes, which have a GIL each, at 0.89. So the pool runs its work in
worker processes by default (`processes=True`), driven by two threads per worker in the calling
process (one sends chunks, one receives results, so the caller never blocks on a pipe);
`processes=False` keeps the plain thread pool.

A worker is `python -c` running `_worker_main` with two pipes: tasks are pickled
`(task id, function, context key, context, prepare, chunk)` tuples, where the function and
`prepare` are module-level functions (pickled by name). The context (the device keys, for
example) is sent to a worker only when it changed since the last task it got, and `prepare`
turns it into the worker's working form once (key bytes into key objects). A worker ignores
SIGINT and exits when its task pipe closes, so it never outlives the process that started it,
even one that is killed with SIGKILL. If a worker dies, its unfinished chunks are run in the
calling thread instead and a new worker is started for the next task.

Policy (docs/gateway.md):
* r and s must be in 1..n-1 (else `bad_signature`);
* s must be at most n/2: the firmware emits low-S, so a high-S signature is the malleated twin of
  a valid one and is refused as `high_s` even though plain ECDSA would accept it;
* anything `cryptography` refuses is `bad_signature`.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from queue import SimpleQueue
from typing import Any, Generic, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import ConfigError
from gateway.wire.cose import HALF_N, P256_N

ES256 = ec.ECDSA(hashes.SHA256())
CHUNK = 256

PublicKey = ec.EllipticCurvePublicKey
T = TypeVar("T")
R = TypeVar("R")


def load_public_key(point: bytes) -> PublicKey:
    """A P-256 public key from its SEC1 encoding (65-byte uncompressed or 33-byte compressed)."""
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except (ValueError, TypeError) as e:
        raise ConfigError(
            f"not a P-256 public key ({len(point)} bytes): {e}",
            "give the device's 65-byte SEC1 point (130 hex characters, as `keygen` prints)",
        ) from None


def point_bytes(key: PublicKey) -> bytes:
    """The 65-byte uncompressed SEC1 encoding of a P-256 public key."""
    return key.public_bytes(serialization.Encoding.X962,
                            serialization.PublicFormat.UncompressedPoint)


_N_BYTES = P256_N.to_bytes(32, "big")
_HALF_N_BYTES = HALF_N.to_bytes(32, "big")
_ZERO = bytes(32)


def _der_int(b: bytes) -> bytes:
    b = b.lstrip(b"\x00")
    return b"\x00" + b if b[0] & 0x80 else b


def check_signature(key: PublicKey, to_be_signed: bytes, signature: bytes) -> str | None:
    """Verify one ES256 signature. Returns None when valid, else the rejection reason
    (`bad_signature_length`, `bad_signature` or `high_s`). The range checks compare the 32-byte
    big-endian halves as bytes (the same order as the numbers) and the DER form `cryptography`
    wants is built directly: half the cost of converting to ints and back."""
    if len(signature) != 64:
        return "bad_signature_length"
    r, s = signature[:32], signature[32:]
    if not (_ZERO < r < _N_BYTES and _ZERO < s < _N_BYTES):
        return "bad_signature"
    if s > _HALF_N_BYTES:
        return "high_s"
    r, s = _der_int(r), _der_int(s)
    try:
        key.verify(b"\x30%c\x02%c%b\x02%c%b" % (len(r) + len(s) + 4, len(r), r, len(s), s),
                   to_be_signed, ES256)
    except InvalidSignature:
        return "bad_signature"
    return None


def chunked(items: Sequence[T], size: int = CHUNK) -> list[Sequence[T]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


C = TypeVar("C")


@dataclass(frozen=True)
class Context(Generic[C]):
    """What a pooled function needs besides its chunk. `value` is sent to each worker process
    (once per `key`: give a new key whenever the value changes) and `prepare(value)` is run
    there once; `local` is the prepared form for chunks run in this process (threads, or
    inline). `prepare` must be a module-level function (it is pickled by name)."""

    key: object
    value: Any
    prepare: Callable[[Any], C] | None
    local: C


class WorkerLost(Exception):
    """A worker process exited before it returned a chunk's results."""


# the modules the pipeline's and the audit's tasks use, imported before the worker says "ready"
_WORKER_CODE = ("import sys; import gateway.ingest.pipeline, gateway.audit.store_audit; "
                "from gateway.ingest.verifier import _worker_main; _worker_main(*sys.argv[1:])")
READY = -1  # the task id of the message a worker sends once it is ready


def _worker_main(rfd: str, wfd: str) -> None:
    """A worker process: run tasks from the task pipe until it closes (see the module doc)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    rx, tx = Connection(int(rfd), writable=False), Connection(int(wfd), readable=False)
    os.dup2(2, 1)  # anything printed goes to stderr, never into a pipe
    try:
        tx.send((READY, True, None))
    except (OSError, ValueError):
        return
    key: object = object()
    prepared: Any = None
    while True:
        try:
            task = rx.recv()
        except (EOFError, OSError):
            return
        task_id, fn, ctx_key, has_value, value, prepare, chunk = task
        try:
            if has_value or ctx_key != key:
                prepared = prepare(value) if prepare is not None else value
                key = ctx_key
            reply = (task_id, True, fn(prepared, chunk))
        except Exception as e:  # reported to the caller, which runs the chunk itself
            reply = (task_id, False, f"{type(e).__name__}: {e}")
        try:
            tx.send(reply)
        except (OSError, ValueError):
            return


class _Worker:
    """One worker process and the two threads that feed it and read its results."""

    _ids = itertools.count()

    def __init__(self) -> None:
        r1, w1 = os.pipe()  # tasks: us -> worker
        r2, w2 = os.pipe()  # results: worker -> us
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # so the worker imports this gateway
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                    else "")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_CODE, str(r1), str(w2)], pass_fds=(r1, w2),
                stdin=subprocess.DEVNULL, env=env)
        finally:
            os.close(r1)
            os.close(w2)
        self.tx = Connection(w1, readable=False)
        self.rx = Connection(r2, writable=False)
        self.ctx_key: object = object()
        self.pending: dict[int, Future[Any]] = {}
        self.lock = threading.Lock()
        self.alive = True
        self.ready = threading.Event()
        self.outbox: SimpleQueue[tuple[Any, ...] | None] = SimpleQueue()
        n = next(self._ids)
        self.threads = [threading.Thread(target=self._send_loop, name=f"verify-tx-{n}",
                                         daemon=True),
                        threading.Thread(target=self._recv_loop, name=f"verify-rx-{n}",
                                         daemon=True)]
        for t in self.threads:
            t.start()

    def submit(self, task_id: int, fn: Callable[..., Any], ctx: Context[Any] | None,
               chunk: Sequence[Any]) -> Future[Any]:
        fut: Future[Any] = Future()
        with self.lock:
            if not self.alive:
                fut.set_exception(WorkerLost("the verifier process has exited"))
                return fut
            self.pending[task_id] = fut
        if ctx is None:
            key, send, value, prepare = None, False, None, None
        else:
            key, prepare = ctx.key, ctx.prepare
            send = key != self.ctx_key
            value = ctx.value if send else None
            self.ctx_key = key
        self.outbox.put((task_id, fn, key, send, value, prepare, chunk))
        return fut

    def _send_loop(self) -> None:
        while True:
            task = self.outbox.get()
            if task is None:
                break
            try:
                self.tx.send(task)
            except (OSError, ValueError):
                break
        self.tx.close()  # the worker sees EOF and exits

    def _recv_loop(self) -> None:
        while True:
            try:
                task_id, ok, result = self.rx.recv()
            except (EOFError, OSError, ValueError):
                break
            if task_id == READY:
                self.ready.set()
                continue
            with self.lock:
                fut = self.pending.pop(task_id, None)
            if fut is not None:
                if ok:
                    fut.set_result(result)
                else:
                    fut.set_exception(WorkerLost(f"the verifier process failed: {result}"))
        with self.lock:
            self.alive = False
            lost, self.pending = self.pending, {}
        for fut in lost.values():
            fut.set_exception(WorkerLost("the verifier process exited"))
        self.ready.set()  # nobody waits for a dead worker
        self.rx.close()

    def stop(self, timeout: float = 5.0) -> None:
        self.outbox.put(None)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self.threads:
            t.join(timeout)


def _stop_all(workers: list[_Worker]) -> None:
    for w in workers:
        w.stop()


class VerifierPool:
    """Maps a function over chunks of work on worker processes (or threads), keeping the order.

    `workers` defaults to the number of cores. `iter_chunks(fn, items, ctx)` splits `items`
    into chunks of at most `chunk` and yields fn(ctx, chunk) per chunk, in input order, as each
    is ready. `fn` must be a module-level function when `processes` is true. With one worker,
    or a handful of items, the chunks run in the calling thread (a hop costs more than it
    saves). The processes start on first use.
    """

    def __init__(self, workers: int | None = None, chunk: int = CHUNK, *,
                 processes: bool = True) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.chunk = chunk
        self.processes = processes
        self._pool: ThreadPoolExecutor | None = None
        self._procs: list[_Worker] = []
        self._finalizer: weakref.finalize | None = None
        self._task_ids = itertools.count()
        self._next = 0

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="verify")
        return self._pool

    def start(self, wait: bool = False) -> None:
        """Start the worker processes now rather than on first use (each takes about 0.1 s to
        import `cryptography` and the gateway's modules); with `wait`, until they are ready."""
        if self.processes and self.workers > 1 and not self._procs:
            self._procs = [_Worker() for _ in range(self.workers)]
            self._finalizer = weakref.finalize(self, _stop_all, self._procs)
        if wait:
            for w in self._procs:
                w.ready.wait(60)

    def _worker(self) -> _Worker:
        """The next worker in turn, (re)started if needed."""
        self.start(wait=False)
        i = self._next % len(self._procs)
        self._next += 1
        w = self._procs[i]
        if not w.alive:
            w.stop(1.0)
            w = self._procs[i] = _Worker()
        return w

    def iter_chunks(self, fn: Callable[[Any, Sequence[T]], list[R]], items: Sequence[T],
                    ctx: Context[Any] | None = None) -> Iterator[list[R]]:
        """fn over chunks of items, started at once; the returned iterator yields each chunk's
        results in input order as soon as it is ready, so the caller can work on chunk k (or on
        anything else) while the pool verifies the rest."""
        local = None if ctx is None else ctx.local
        if not items:
            return iter(())
        if self.workers == 1 or len(items) <= 16:
            return (fn(local, part) for part in (items,))
        size = min(self.chunk, max(16, -(-len(items) // self.workers)))
        parts = chunked(items, size)
        if not self.processes:
            return self._executor().map(lambda part: fn(local, part), parts)
        futures = [(self._worker().submit(next(self._task_ids), fn, ctx, part), part)
                   for part in parts]

        def results() -> Iterator[list[R]]:
            for fut, part in futures:
                try:
                    yield fut.result()
                except WorkerLost:
                    yield fn(local, part)  # the work is still done, here

        return results()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._finalizer is not None:
            self._finalizer()  # stops the worker processes (once)
            self._finalizer = None
        self._procs = []

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
