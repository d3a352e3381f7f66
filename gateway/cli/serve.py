"""`iot-anchor serve --http HOST:PORT`: the read-only HTTP server over a data directory."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from gateway.cli import Subcommands, add_data_arg
from gateway.http.access import DEFAULT_HOST, load_token, parse_http_address

DEFAULT_PORT = 8080


def add_http_args(p: argparse.ArgumentParser, *, default: str | None) -> None:
    """--http HOST:PORT, --http-token TOKEN, --http-token-file FILE (run and serve)."""
    shown = f" (default {default})" if default else " (default: no HTTP server)"
    p.add_argument("--http", metavar="HOST:PORT", default=default,
                   help="serve the log (C2SP tlog-tiles), the operator console (/console/) and "
                        "/metrics over HTTP, read-only, on this address"
                        f"{shown}; HOST defaults to {DEFAULT_HOST}; any address that is not "
                        "loopback needs a token")
    p.add_argument("--http-token", metavar="TOKEN",
                   help="require 'Authorization: Bearer TOKEN' on every HTTP request "
                        "(prefer --http-token-file: a command line is visible to other users)")
    p.add_argument("--http-token-file", metavar="FILE",
                   help="read the bearer token from the first line of FILE")


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "serve", help="serve a data directory's log over HTTP (read-only)",
        description="Serve the ledger of --data DIR over HTTP, read-only, as C2SP tlog-tiles "
                    "(/checkpoint, /tile/<L>/<N>, /tile/entries/<N>), with the readings of "
                    "each batch and receipts (docs/tlog.md), and the operator console on "
                    "/console/ with its JSON API and /metrics (docs/console.md). Prints the "
                    "URL once listening. "
                    "SIGTERM or SIGINT stops it (exit 0).")
    add_data_arg(p)
    add_http_args(p, default=f"{DEFAULT_HOST}:{DEFAULT_PORT}")
    p.set_defaults(func=cmd_serve)


async def _serve(data_dir: Path, host: str, port: int, token: str | None) -> int:
    from gateway.http.app import serve, url_of
    from gateway.http.context import HttpContext

    ctx = await asyncio.to_thread(HttpContext.for_data_dir, data_dir)
    try:
        runner = await serve(ctx, host, port, token)
        try:
            print(f"serving {data_dir} on {url_of(runner)}", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        finally:
            await runner.cleanup()
    finally:
        await asyncio.to_thread(ctx.close)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    host, port = parse_http_address(args.http)
    token = load_token(args.http_token, args.http_token_file)
    return asyncio.run(_serve(Path(args.data), host, port, token))
