"""The gateway's one HTTP server (aiohttp): read-only, GET/HEAD only, optional bearer token.

`app.build_app(ctx, token=...)` builds the application from the route providers (each a module
with `add_routes(app, ctx)`): `tlog_routes` (the C2SP tlog-tiles API, batch bundles, receipts)
and the operator console's. `app.serve(ctx, host, port, token)` starts it on the running event
loop: `iot-anchor run --http` inside the service's loop, `iot-anchor serve --http` alone over a
data directory. Store reads run on the context's reader threads, each with its own read-only
SQLite connection, so serving never blocks the event loop or the pipeline's writes.

Modules: `context` (HttpContext, the reader threads), `access` (address and token rules, the
middleware), `app` (build_app, serve), `tlog_routes` (the log's routes).
"""
