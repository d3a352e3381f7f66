"""The one HTTP server: `build_app` from the route providers, `serve` on the running loop.

A provider is a module with ``add_routes(app: web.Application, ctx: HttpContext) -> None``;
PROVIDERS lists them in the order their routes are added. Every route is GET (aiohttp adds
HEAD for it); gateway.http.access adds the token check and the read-only rule in front.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from gateway.console import routes as console_routes
from gateway.errors import ConfigError
from gateway.http import tlog_routes
from gateway.http.access import READ_METHODS, SIGN_IN_PAGES, TOKEN_COOKIE, check_bind
from gateway.http.context import HttpContext

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Provider = Callable[[web.Application, HttpContext], None]

PROVIDERS: list[Provider] = [
    tlog_routes.add_routes,
    console_routes.add_routes,
]

CTX_KEY = web.AppKey("ctx", HttpContext)
# A GET carries no body: refuse bodies and oversized request lines/headers early.
_MAX_BODY = 1024


def access_middleware(token: str | None) -> Any:  # an aiohttp middleware
    """401 without the right bearer token (when one is set; in the Authorization header or
    the TOKEN_COOKIE cookie), then 405 for writes, 413 for a request with a body."""
    expected = f"Bearer {token}".encode() if token is not None else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is not None:
            given = request.headers.get("Authorization", "").encode("utf-8", "replace")
            cookie = ("Bearer " + unquote(request.cookies.get(TOKEN_COOKIE, ""))).encode(
                "utf-8", "replace")
            if not (hmac.compare_digest(given, expected)
                    or hmac.compare_digest(cookie, expected)):
                headers = {"WWW-Authenticate": 'Bearer realm="iot-anchor"'}
                for prefix, html in request.app.get(SIGN_IN_PAGES, {}).items():
                    if request.path.startswith(prefix):
                        return web.Response(status=401, text=html, content_type="text/html",
                                            headers=headers)
                return web.Response(status=401, text="a bearer token is required\n",
                                    headers=headers)
        if request.method not in READ_METHODS:
            return web.Response(status=405, text="this server is read-only: GET or HEAD\n",
                                headers={"Allow": "GET, HEAD"})
        if request.content_length or request.headers.get("Transfer-Encoding"):
            return web.Response(status=413, text="a GET or HEAD request carries no body\n")
        response = await handler(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    return middleware


def build_app(ctx: HttpContext, *, token: str | None) -> web.Application:
    app = web.Application(middlewares=[access_middleware(token)], client_max_size=_MAX_BODY,
                          handler_args={"max_line_size": 8190, "max_field_size": 8190})
    app[CTX_KEY] = ctx
    for provider in PROVIDERS:
        provider(app, ctx)
    return app


async def serve(ctx: HttpContext, host: str, port: int, token: str | None) -> web.AppRunner:
    """Start the server on the running event loop; returns its runner (`await
    runner.cleanup()` stops it). Refuses a non-loopback host without a token."""
    check_bind(host, token)
    runner = web.AppRunner(build_app(ctx, token=token), access_log=None,
                           handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                          "pick another --http address or port (0 picks a free one)") from e
    return runner


def bound_address(runner: web.AppRunner) -> tuple[str, int]:
    """(host, port) the server listens on (the real port when 0 was asked for)."""
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return str(addr[0]), int(addr[1])
    raise ConfigError("the HTTP server is not listening", "start it with serve()")


def url_of(runner: web.AppRunner) -> str:
    host, port = bound_address(runner)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


__all__ = ["CTX_KEY", "PROVIDERS", "HttpContext", "bound_address", "build_app", "serve",
           "url_of"]
