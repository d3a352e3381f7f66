"""The console's routes on the one HTTP server (gateway.http): pages, JSON API, /metrics.

    /                         -> /console/
    /console/                 overview          /console/devices    devices table
    /console/device?id=ID     one device        /console/receipts   receipt check (in the page)
    /console/records          rules, actions, datasets, models (where the ledger has them)
    /console/static/...       the pages' scripts, styles and the charting library (uPlot)
    /metrics                  Prometheus exposition (the service's metrics under run, and the
                              ledger's totals)
    /api/overview  /api/devices  /api/devices/{id}  /api/devices/{id}/series
    /api/events  /api/records  /api/records/{kind}
    (a reading's receipt is the log's /receipt/{id}/{seq}, gateway/http/tlog_routes.py)

Every answer is GET (the server's middleware refuses anything else); bad parameters get a
JSON `{"error": ...}` with 400 (413 for a series range with too many readings, 404 for an
unknown device or reading). docs/console.md is the reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.console import queries
from gateway.console.history import History
from gateway.console.queries import BadRequest
from gateway.errors import AnchorError
from gateway.http.access import SIGN_IN_PAGES, TOKEN_COOKIE
from gateway.http.context import HttpContext
from gateway.observe.metrics import CONTENT_TYPE, ledger_exposition

log = logging.getLogger("iot_anchor.console")

STATIC = Path(str(resources.files("gateway.console") / "static"))
VENDOR = STATIC / "vendor"
PAGES = {"": "overview.html", "devices": "devices.html", "device": "device.html",
         "receipts": "receipts.html", "records": "records.html"}
HISTORY_KEY = web.AppKey("console_history", History)
NO_STORE = {"Cache-Control": "no-store"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(obj, separators=(",", ":")), status=status,
                        content_type="application/json", headers=NO_STORE)


def _int(request: web.Request, name: str, default: int | None, lo: int = 0,
         hi: int = (1 << 62)) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise BadRequest(f"{name}={raw[:40]!r} is not an integer") from None
    if not lo <= v <= hi:
        raise BadRequest(f"{name}={v} is out of range ({lo}..{hi})")
    return v


def _float(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        v = float(raw)
    except ValueError:
        raise BadRequest(f"{name}={raw[:40]!r} is not a number (Unix seconds)") from None
    if not 0 <= v < 1e11:
        raise BadRequest(f"{name}={raw[:40]!r} is not a time in Unix seconds")
    return v


def _api(fn: Handler) -> Handler:
    """JSON errors for BadRequest and AnchorError (a damaged database: 500 with its text)."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except BadRequest as e:
            return _json({"error": e.what}, e.status)
        except AnchorError as e:
            log.warning("console %s: %s", request.path, e.explain())
            return _json({"error": e.explain()}, 500)
    return wrapped


def add_routes(app: web.Application, ctx: HttpContext) -> None:
    history = app[HISTORY_KEY] = History()
    # without the token, a console page answers 401 with the sign-in page (it stores the
    # token in the cookie the server's access check accepts, and reloads)
    pages: dict[str, str] = {}
    if SIGN_IN_PAGES in app:
        before: dict[str, str] = app[SIGN_IN_PAGES]
        pages.update(before)
    pages["/console"] = (STATIC / "signin.html").read_text().replace("TOKEN_COOKIE",
                                                                      TOKEN_COOKIE)
    app[SIGN_IN_PAGES] = pages

    async def sampler(_app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            try:
                since = int((time.time() - history.span) * 1000)
                fig, batches = await ctx.read(
                    lambda s: (queries.figures(s), s.console_batches_since(since)))
                history.backfill(fig, batches)
                await asyncio.sleep(history.interval)
            except AnchorError as e:
                log.warning("console: cannot read the last hour's batches: %s", e.explain())
            while True:
                try:
                    history.add(await ctx.read(queries.figures))
                except AnchorError as e:
                    log.warning("console: cannot sample the ledger: %s", e.explain())
                await asyncio.sleep(history.interval)

        task = asyncio.ensure_future(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(sampler)

    def live() -> dict[str, Any] | None:
        svc = ctx.live
        if svc is None or not hasattr(svc, "metrics"):
            return None
        out = dict(svc.metrics.snapshot())
        g = svc.live_gauges()
        out.update(inbox=g.inbox, verifying=g.verifying, open_batch=g.open_batch,
                   acks_in_flight=g.acks_in_flight, acks_waiting=g.acks_waiting,
                   connected=g.connected, received=g.received)
        return out

    async def root(_request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/console/")

    async def page(request: web.Request) -> web.StreamResponse:
        name = PAGES.get(request.match_info.get("page", ""))
        if name is None:
            raise web.HTTPNotFound(text="no such console page; start at /console/\n")
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    async def metrics(_request: web.Request) -> web.Response:
        fig = await ctx.read(queries.figures)
        body = ledger_exposition(fig)
        svc = ctx.live
        if svc is not None and hasattr(svc, "metrics"):
            body = svc.metrics.exposition() + body
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, **NO_STORE})

    @_api
    async def overview(_request: web.Request) -> web.StreamResponse:
        ledger = await ctx.read(queries.overview)
        return _json({"ledger": ledger, "live": live(), "rate": history.rate(),
                      "history": history.to_json()})

    @_api
    async def devices(request: web.Request) -> web.StreamResponse:
        q = request.query
        return _json(await ctx.read(
            lambda s: queries.devices(
                s, sort=q.get("sort", "id"), desc=q.get("desc", "") in ("1", "true"),
                q=q.get("q", ""), status=q.get("status", ""),
                offset=_int(request, "offset", 0) or 0,
                limit=_int(request, "limit", 100, 1, queries.PAGE_MAX) or 100)))

    @_api
    async def device(request: web.Request) -> web.StreamResponse:
        return _json(await ctx.read(queries.device, request.match_info["dev"]))

    @_api
    async def series(request: web.Request) -> web.StreamResponse:
        start, end = _float(request, "from"), _float(request, "to")
        return _json(await ctx.read(queries.series, request.match_info["dev"], start, end))

    @_api
    async def events(request: web.Request) -> web.StreamResponse:
        limit = _int(request, "limit", 50, 1, queries.EVENTS_MAX) or 50
        return _json(await ctx.read(queries.events, limit))

    @_api
    async def record_kinds(_request: web.Request) -> web.StreamResponse:
        return _json({"kinds": await ctx.read(queries.record_kinds)})

    @_api
    async def records(request: web.Request) -> web.StreamResponse:
        before = _int(request, "before", None)
        limit = _int(request, "limit", 50, 1, queries.RECORDS_MAX) or 50
        return _json(await ctx.read(queries.records, request.match_info["kind"], before,
                                    limit))

    @_api
    async def api_unknown(request: web.Request) -> web.StreamResponse:
        raise BadRequest(f"no API {request.path[:80]!r}; see docs/console.md", 404)

    r = app.router
    r.add_get("/", root)
    r.add_get("/console", root)
    r.add_get("/console/", page)
    r.add_get("/console/{page:[a-z]+}", page)
    r.add_static("/console/static", STATIC, follow_symlinks=False)
    r.add_get("/metrics", metrics)
    r.add_get("/api/overview", overview)
    r.add_get("/api/devices", devices)
    r.add_get("/api/devices/{dev}", device)
    r.add_get("/api/devices/{dev}/series", series)
    r.add_get("/api/events", events)
    r.add_get("/api/records", record_kinds)
    r.add_get("/api/records/{kind}", records)
    r.add_get("/api/{rest:.*}", api_unknown)
