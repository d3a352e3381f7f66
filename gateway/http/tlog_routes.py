"""The log's routes (C2SP tlog-tiles): the checkpoint; docs/tlog.md gives every path."""

from __future__ import annotations

from aiohttp import web

from gateway.http.context import HttpContext
from gateway.storage.store import Store

TEXT = "text/plain; charset=utf-8"
# The checkpoint changes with every commit: caches may keep it this long at most.
MUTABLE = "public, max-age=1"


def _latest(store: Store) -> str | None:
    cp = store.latest_checkpoint()
    return cp[1] if cp else None


def add_routes(app: web.Application, ctx: HttpContext) -> None:
    async def checkpoint(_request: web.Request) -> web.Response:
        text = await ctx.read(_latest)
        if text is None:
            raise web.HTTPNotFound(text="the ledger has no checkpoint yet\n")
        return web.Response(body=text.encode(), content_type="text/plain", charset="utf-8",
                            headers={"Cache-Control": MUTABLE})

    app.router.add_get("/checkpoint", checkpoint)
