"""`iot-anchor witness serve`: a C2SP tlog-witness over HTTP.

    POST /add-checkpoint            old size, consistency proof, checkpoint -> cosignature line
    GET  /<sha256(origin) hex>/checkpoint   the latest cosigned checkpoint with a fresh
                                            cosignature (the spec's monitor retrieval)

Status codes as the spec gives them: 404 unknown origin, 403 no valid signature by the log,
400 malformed request or old size above the checkpoint's, 409 old size is not the latest
cosigned one (body: that size and a newline, `text/x.tlog.size`), 422 a consistency proof that
fails (or a size-0 checkpoint without the empty root). Every decision is made and committed by
`WitnessState` on one thread, before the answer is sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.errors import ConfigError
from gateway.ledger import note
from gateway.ledger.cosignature import MAX_REQUEST, WitnessKey, cosign
from gateway.tlog.witness_state import WitnessState

log = logging.getLogger("iot_anchor.witness")
SIZE_TYPE = "text/x.tlog.size"


@dataclass
class Witness:
    key: Ed25519PrivateKey
    me: WitnessKey
    state: WitnessState

    def cosign_now(self, text: str) -> str:
        return cosign(text, self.me.name, self.key, max(1, int(time.time())))


def build_witness_app(w: Witness) -> web.Application:
    pool = ThreadPoolExecutor(1, thread_name_prefix="witness")  # one decision at a time
    app = web.Application(client_max_size=MAX_REQUEST)

    async def add_checkpoint(request: web.Request) -> web.Response:
        body = await request.read()
        loop = asyncio.get_running_loop()
        d = await loop.run_in_executor(pool, w.state.add_checkpoint, body)
        if d.status == 200:
            line = w.cosign_now(d.text)
            log.info("cosigned %s", d.text.split("\n", 2)[:2])
            return web.Response(text=line, content_type="text/plain", charset="utf-8")
        if d.status == 409:
            return web.Response(status=409, body=f"{d.size}\n".encode(),
                                headers={"Content-Type": SIZE_TYPE})
        log.info("refused (%d): %s", d.status, d.reason)
        return web.Response(status=d.status, text=d.reason + "\n")

    async def latest(request: web.Request) -> web.Response:
        want = request.match_info["hash"]
        for origin in w.state.logs:
            if hashlib.sha256(origin.encode()).hexdigest() == want:
                got = await asyncio.get_running_loop().run_in_executor(pool, w.state.latest,
                                                                       origin)
                if got is None:
                    break
                signed = got[2]
                text, _ = note.split_note(signed)
                return web.Response(text=signed + w.cosign_now(text), content_type="text/plain",
                                    charset="utf-8", headers={"Cache-Control": "no-cache"})
        raise web.HTTPNotFound(text="this witness has cosigned no checkpoint of that log\n")

    async def close_pool(_app: web.Application) -> None:
        pool.shutdown(wait=True)

    app.router.add_post("/add-checkpoint", add_checkpoint)
    app.router.add_get("/{hash:[0-9a-f]{64}}/checkpoint", latest)
    app.on_cleanup.append(close_pool)
    return app


async def run_witness(w: Witness, host: str, port: int, stop: asyncio.Event) -> None:
    runner = web.AppRunner(build_witness_app(w), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                          "pick another --http address or port") from e
    try:
        addr = runner.addresses[0]
        shown = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
        print(f"witness {w.me.name} serving on http://{shown}:{addr[1]}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
