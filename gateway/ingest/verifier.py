"""The pool of worker processes that decode and verify readings in chunks (the check itself is
`gateway.wire.es256`).

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

CHUNK = 256

T = TypeVar("T")
R = TypeVar("R")


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

    def worker_processes(self) -> list[subprocess.Popen[bytes]]:
        """The worker processes running now (none before `start` or with processes=False)."""
        return [w.proc for w in self._procs]

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
