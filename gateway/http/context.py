"""HttpContext: what every route provider gets (the data directory, its store, the gateway)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gateway.storage.store import Store

T = TypeVar("T")

# Reader threads per server: two keep one slow read (a tile of a cold database) from holding
# up every other request, and bound the threads that compete with the pipeline for the GIL.
READERS = 2


@dataclass
class HttpContext:
    """The data directory served, its gateway vkey, and `live`: the running service (a
    `gateway.service.GatewayService`, for its counters) under `run --http`, None under `serve`.

    `read(fn, *args)` runs ``fn(store, *args)`` on a reader thread with that thread's own
    read-only Store and returns its result; `open_store()` opens one more read-only Store.
    `close()` closes the reader threads' stores (call it after the server stopped).
    """

    data_dir: Path
    vkey: str
    live: Any = None
    readers: int = READERS
    _pool: ThreadPoolExecutor = field(init=False, repr=False)
    _local: threading.local = field(init=False, repr=False)
    _stores: list[Store] = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(self.readers, thread_name_prefix="anchor-http")
        self._local = threading.local()
        self._stores = []
        self._lock = threading.Lock()

    @classmethod
    def for_data_dir(cls, data_dir: Path, live: Any = None) -> HttpContext:
        """A context over DIR; reads the gateway vkey from its database (read-only)."""
        with Store.open(data_dir, readonly=True) as store:
            vkey = store.vkey()
        return cls(Path(data_dir), vkey, live)

    def open_store(self) -> Store:
        return Store.open(self.data_dir, readonly=True)

    def _thread_store(self) -> Store:
        store: Store | None = getattr(self._local, "store", None)
        if store is None:
            store = self.open_store()
            self._local.store = store
            with self._lock:
                self._stores.append(store)
        return store

    def _run(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        return fn(self._thread_store(), *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, fn, args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            for s in self._stores:
                s.close()
            self._stores.clear()
