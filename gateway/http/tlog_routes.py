"""The log's routes (C2SP tlog-tiles, plus batch bundles and receipts); docs/tlog.md.

    /checkpoint                     the latest signed checkpoint, with its cosignatures
    /tile/<L>/<N>[.p/<W>]           hash tiles (height 8) of the ledger tree
    /tile/entries/<N>[.p/<W>]       entry bundles: the ledger entries' bytes
    /batch/<I>                      the readings of batch entry I (a bundle of COSE messages)
    /receipt/<DEVICE>/<SEQ>         the receipt of a reading (JSON, as `iot-anchor receipt`)

Only what the latest checkpoint covers is served. Full tiles, full entry bundles and batch
bundles never change: they are served as immutable; the checkpoint, partial tiles and
receipts (which carry the latest checkpoint) get a short cache lifetime.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.errors import AnchorError
from gateway.http.context import HttpContext
from gateway.ledger import tiles
from gateway.ledger.receipt import build_receipt, receipt_to_json
from gateway.storage.store import Store

OCTETS = "application/octet-stream"
IMMUTABLE = "public, max-age=31536000, immutable"
MUTABLE = "public, max-age=1"  # the checkpoint, receipts
PARTIAL = "public, max-age=60"  # a partial tile is replaced by the full one in time
MAX_SEQ = (1 << 63) - 1


def checkpoint_text(store: Store) -> str | None:
    """The latest checkpoint note with every cosignature gathered for it, or None."""
    cp = store.latest_checkpoint()
    if cp is None:
        return None
    return cp[1] + "".join(store.cosignature_lines(cp[0]))


def _size(store: Store) -> int:
    cp = store.latest_checkpoint()
    return cp[0] if cp else 0


def _tile(store: Store, t: tiles.Tile) -> bytes | None:
    if not tiles.tile_exists(t, _size(store)):
        return None
    lo = t.index * tiles.WIDTH
    if t.level is None:
        items = store.entry_bodies(lo, lo + t.width)
        return tiles.encode_bundle(items) if len(items) == t.width else None
    hashes = store.tile_hashes(tiles.HEIGHT * t.level, lo, lo + t.width)
    return b"".join(hashes) if len(hashes) == t.width else None


def _batch(store: Store, entry: int) -> bytes | None:
    if entry >= _size(store):
        return None
    cose = store.batch_readings(entry)
    return None if cose is None else tiles.encode_bundle(cose)


def _receipt(store: Store, dev: str, seq: int) -> str | None:
    parts = store.receipt_parts(dev, seq)
    if parts is None:
        return None
    return receipt_to_json(build_receipt(**store.with_best_checkpoint(parts)))


def _bad(what: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=what + "\n")


def _decimal(text: str, what: str, hi: int) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 19 or \
            (len(text) > 1 and text[0] == "0") or int(text) > hi:
        raise _bad(f"{what} {text[:24]!r} is not a decimal number 0..{hi}")
    return int(text)


def add_routes(app: web.Application, ctx: HttpContext) -> None:
    async def read(fn: Any, *args: Any) -> Any:
        try:
            return await ctx.read(fn, *args)
        except AnchorError as e:
            raise web.HTTPServiceUnavailable(text=f"{e.explain()}\n") from None

    async def checkpoint(_request: web.Request) -> web.Response:
        text = await read(checkpoint_text)
        if text is None:
            raise web.HTTPNotFound(text="the ledger has no checkpoint yet\n")
        return web.Response(body=text.encode(), content_type="text/plain", charset="utf-8",
                            headers={"Cache-Control": MUTABLE})

    async def tile(request: web.Request) -> web.Response:
        try:
            t = tiles.parse_tile_path("tile/" + request.match_info["path"])
        except tiles.TileError as e:
            raise _bad(e.what) from None
        body = await read(_tile, t)
        if body is None:
            raise web.HTTPNotFound(text=f"{t.path} is not in the tree of the latest "
                                        "checkpoint\n")
        r = web.Response(body=body, content_type=OCTETS,
                         headers={"Cache-Control": IMMUTABLE if t.full else PARTIAL})
        if t.level is None:
            r.enable_compression()
        return r

    async def batch(request: web.Request) -> web.Response:
        entry = _decimal(request.match_info["entry"], "batch entry", MAX_SEQ)
        body = await read(_batch, entry)
        if body is None:
            raise web.HTTPNotFound(text=f"ledger entry {entry} is not a batch of the latest "
                                        "checkpoint\n")
        r = web.Response(body=body, content_type=OCTETS, headers={"Cache-Control": IMMUTABLE})
        r.enable_compression()
        return r

    async def receipt(request: web.Request) -> web.Response:
        dev = request.match_info["dev"]
        if not 0 < len(dev.encode()) <= 64:
            raise _bad("a device id is 1 to 64 bytes")
        seq = _decimal(request.match_info["seq"], "seq", MAX_SEQ)
        text = await read(_receipt, dev, seq)
        if text is None:
            raise web.HTTPNotFound(text=f"device {dev!r} seq {seq} is not anchored\n")
        return web.Response(text=text, content_type="application/json",
                            headers={"Cache-Control": MUTABLE})

    app.router.add_get("/checkpoint", checkpoint)
    app.router.add_get("/tile/{path:.+}", tile)
    app.router.add_get("/batch/{entry}", batch)
    app.router.add_get("/receipt/{dev}/{seq}", receipt)
