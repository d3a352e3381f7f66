"""`run --witness URL=VKEY`: the gateway sends its checkpoints to its witnesses.

One task per witness, on the service's event loop; anchoring never waits for it. Each task
keeps the size the witness last cosigned and, whenever the ledger has a newer checkpoint,
sends it (C2SP tlog-witness add-checkpoint: the old size, the consistency proof from it, the
note), always the latest one: checkpoints signed meanwhile are skipped, not queued. A 409
tells the witness's size, which is taken and the request sent again. The cosignature line of
a 200 is checked against the witness's vkey and stored (`cosignatures`), so /checkpoint and
new receipts carry it. A witness that is down or refuses is retried with exponential backoff
(0.5 s doubling to 60 s, with jitter); its state is kept in `witness_status` for `ledger status`.

Store work runs on one thread with its own connection to the ledger; each write is one small
transaction (a cosignature with the witness's status, or a changed status) without an fsync
(`Store.relax_durability`: a cosignature lost to a power cut is harmless), so the pipeline's
commits are not held up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from gateway.errors import AnchorError, ConfigError
from gateway.ledger.cosignature import (
    WitnessKey,
    cosignatures,
    format_add_checkpoint,
    parse_witness_vkey,
)
from gateway.storage.store import Store

log = logging.getLogger("iot_anchor.witness_client")
T = TypeVar("T")

BACKOFF_MIN = 0.5
BACKOFF_MAX = 60.0
POLL_S = 2.0  # look for checkpoints signed by other processes (device add, records)
TIMEOUT_S = 10.0
MAX_ANSWER = 64 * 1024


def parse_witness_arg(text: str) -> tuple[str, str]:
    """``URL=VKEY`` -> (url without a trailing "/", vkey); ConfigError if malformed."""
    url, sep, vkey = text.partition("=")
    if not sep or not url.startswith(("http://", "https://")):
        raise ConfigError(f"--witness {text[:80]!r} is not URL=VKEY",
                          "give e.g. --witness http://127.0.0.1:7380=<vkey printed by "
                          "'iot-anchor witness init'>")
    parse_witness_vkey(vkey)
    return url.rstrip("/"), vkey.strip()


@dataclass
class Target:
    url: str
    key: WitnessKey
    size: int = 0
    failures: int = 0
    state: str = "pending"
    detail: str = ""


class WitnessClient:
    def __init__(self, data_dir: Path, witnesses: list[tuple[str, str]],
                 quorum: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.targets = [Target(url, parse_witness_vkey(v)) for url, v in witnesses]
        if len({t.key.vkey for t in self.targets}) != len(self.targets):
            raise ConfigError("a witness key is given twice to --witness",
                              "give each witness once")
        self.quorum = len(self.targets) if quorum is None else quorum
        if not 1 <= self.quorum <= len(self.targets):
            raise ConfigError(f"--witness-quorum {quorum} is not 1..{len(self.targets)} (the "
                              "number of --witness)", "give a quorum the witnesses can reach")
        self._wake = [asyncio.Event() for _ in self.targets]
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="anchor-witness")
        self._store: Store | None = None

    def notify(self) -> None:
        """A new checkpoint was committed."""
        for ev in self._wake:
            ev.set()

    async def _db(self, fn: Any, *args: Any) -> Any:
        def call() -> Any:
            if self._store is None:
                self._store = Store.open(self.data_dir)
                self._store.relax_durability()
            return getattr(self._store, fn)(*args)

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._db("set_witness_config", [(t.key.vkey, t.url) for t in self.targets],
                           self.quorum)
            known = {r["witness"]: r for r in await self._db("witness_statuses")}
            for t in self.targets:
                if t.key.vkey in known:
                    t.size = int(known[t.key.vkey]["size"])
            timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                await asyncio.gather(*(self._follow(http, t, ev, stop)
                                       for t, ev in zip(self.targets, self._wake, strict=True)))
                # stopping: the final checkpoint goes to every witness that is up, briefly
                await asyncio.gather(*(self._last(http, t) for t in self.targets))
        finally:
            def close() -> None:
                if self._store is not None:
                    self._store.close()

            await asyncio.get_running_loop().run_in_executor(self._pool, close)
            self._pool.shutdown(wait=True)

    async def _status(self, t: Target, state: str, detail: str) -> None:
        if (state, detail) != (t.state, t.detail):
            t.state, t.detail = state, detail
            with contextlib.suppress(AnchorError):
                await self._db("set_witness_status", t.key.vkey, t.url, t.size, state, detail)

    async def _follow(self, http: aiohttp.ClientSession, t: Target, wake: asyncio.Event,
                      stop: asyncio.Event) -> None:
        while not stop.is_set():
            delay = POLL_S
            try:
                if await self._round(http, t):
                    t.failures = 0
                    continue  # a 409 taught the witness's size, or it cosigned: look again
            except AnchorError as e:
                await self._fail(t, e.explain())
                delay = self._backoff(t)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
                await self._fail(t, f"unreachable: {e or type(e).__name__}")
                delay = self._backoff(t)
            wake.clear()
            waits = [asyncio.ensure_future(stop.wait())]
            if t.failures == 0:
                waits.append(asyncio.ensure_future(wake.wait()))
            _, pending = await asyncio.wait(waits, timeout=delay,
                                            return_when=asyncio.FIRST_COMPLETED)
            for f in pending:
                f.cancel()

    async def _last(self, http: aiohttp.ClientSession, t: Target) -> None:
        if t.failures:
            return
        with contextlib.suppress(AnchorError, aiohttp.ClientError, TimeoutError, OSError,
                                 ValueError):
            for _ in range(2):  # a 409 first, then the checkpoint
                if not await asyncio.wait_for(self._round(http, t), 3.0):
                    break

    def _backoff(self, t: Target) -> float:
        t.failures += 1
        return min(BACKOFF_MAX, BACKOFF_MIN * 2 ** min(t.failures - 1, 16)) * \
            (0.5 + random.random())

    async def _fail(self, t: Target, detail: str) -> None:
        if t.state != "error" or t.detail != detail:
            log.warning("witness %s: %s; retrying with backoff", t.url, detail)
        await self._status(t, "error", detail)

    async def _round(self, http: aiohttp.ClientSession, t: Target) -> bool:
        """Send the latest checkpoint if the witness lacks it. True when something changed
        (cosigned, or its size learnt from a 409): the caller looks again at once."""
        latest = await self._db("latest_checkpoint")
        if latest is None:
            return False
        size, text = latest
        if size == t.size and t.state == "ok":
            return False
        if t.size > size:
            raise AnchorError(f"the witness has cosigned size {t.size}, above this ledger's "
                              f"{size}", "this data directory was rolled back or replaced: "
                              "restore the newest ledger")
        proof = await self._db("consistency_proof", t.size, size) if t.size < size else []
        body = format_add_checkpoint(t.size, proof, text)
        async with http.post(t.url + "/add-checkpoint", data=body) as r:
            answer = await r.content.read(MAX_ANSWER)
            status = r.status
        if status == 409:
            got = answer.decode("ascii", "replace").strip()
            if not got.isdigit() or len(got) > 19:
                raise AnchorError(f"the witness answered 409 with {got[:40]!r}, not a size")
            t.size = int(got)
            return True
        if status != 200:
            raise AnchorError(f"HTTP {status}: "
                              f"{answer.decode('utf-8', 'replace').strip()[:200]}",
                              "see the witness's log")
        line = answer.decode("utf-8", "replace")
        lines = [ln + "\n" for ln in line.split("\n") if ln]
        good = [ln for ln in lines if t.key.vkey in cosignatures(text + ln, [t.key])]
        if not good:
            raise AnchorError("the witness's answer holds no valid cosignature by its key",
                              "check the witness vkey given to --witness")
        await self._db("add_cosignature", size, t.key.vkey, good[0], t.url)
        t.size = size
        t.state, t.detail = "ok", f"cosigned size {size}"
        return True
