"""`iot-anchor mirror URL --data DIR --gateway-key VKEY [--follow]` and
`iot-anchor verify-evidence DIR --gateway-key VKEY`."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from gateway.cli import Subcommands, add_data_arg
from gateway.errors import AnchorError


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "mirror", help="keep a verified replica of a gateway's log (tlog-tiles over HTTP)",
        description="Fetch the checkpoint of the log at URL (served by 'run --http' or "
                    "'serve'), check its signature, fetch the new tiles, entries and batch "
                    "bundles, prove the new tree extends the one held, re-verify every "
                    "reading's signature against the registry rebuilt from the ledger, and "
                    "store it all in DIR, on which 'ledger verify', 'ledger status' and "
                    "'receipt' work. A fork, a rollback or data that does not hash to the "
                    "checkpoint: exit 1, naming it, with both signed notes under "
                    "DIR/evidence/. Anything refused leaves DIR as it was.")
    p.add_argument("url", metavar="URL", help="the log's URL prefix, e.g. http://gw:8080")
    p.add_argument("--gateway-key", required=True, metavar="VKEY",
                   help="the gateway's vkey (printed by 'iot-anchor init')")
    p.add_argument("--follow", action="store_true",
                   help="keep polling (see --interval); a server that is down is retried with "
                        "backoff; SIGTERM or SIGINT stops it (exit 0)")
    p.add_argument("--interval", metavar="S", type=float, default=2.0,
                   help="seconds between polls with --follow (default 2)")
    p.add_argument("--witness-key", metavar="VKEY", nargs="+", default=[],
                   help="keep only cosignatures by these witnesses that verify (default: keep "
                        "every well-formed cosignature line; receipts are checked anyway)")
    p.add_argument("--http-token-file", metavar="FILE",
                   help="send 'Authorization: Bearer TOKEN' (the first line of FILE)")
    p.add_argument("--workers", type=int, default=2,
                   help="verifier processes (default 2; 1 verifies in this process)")
    add_data_arg(p)
    p.set_defaults(func=_mirror)

    e = sub.add_parser(
        "verify-evidence", help="check a mirror's evidence of a fork or rollback (exit 0 or 1)",
        description="Check an evidence directory written by 'mirror' (DIR/evidence/...): "
                    "both checkpoints must verify with the gateway key, and for a fork the "
                    "consistency proof must show two histories. Prints what it proves.")
    e.add_argument("evidence", metavar="EVIDENCE_DIR")
    e.add_argument("--gateway-key", required=True, metavar="VKEY")
    add_data_arg(e)  # accepted for uniformity; not used
    e.set_defaults(func=_verify_evidence)


def _mirror(args: argparse.Namespace) -> int:
    from gateway.http.access import load_token
    from gateway.tlog.fetch import TooLarge
    from gateway.tlog.mirror import Mirror, Misbehaviour, Refused, follow, stderr_if_tty

    if args.interval <= 0:
        from gateway.errors import ConfigError

        raise ConfigError(f"--interval {args.interval} is not positive", "give e.g. 2")
    token = load_token(None, args.http_token_file) if args.http_token_file else None
    m = Mirror(args.url, Path(args.data), args.gateway_key, token=token,
               witness_keys=args.witness_key, workers=args.workers,
               progress=stderr_if_tty())

    def say(text: str) -> None:
        print(f"mirror: {text}", flush=True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if not args.follow:
            for sig in (signal.SIGTERM, signal.SIGINT):  # stop the round; it is rolled back
                loop.add_signal_handler(sig, m.abort.set)
            r = await m.sync()
            rate = r.readings / r.seconds if r.seconds > 0 else 0.0
            say(f"{args.data} holds size {r.size}: {r.entries} new entries, {r.readings} new "
                f"readings verified ({rate:,.0f} readings/s), {r.cosignatures} cosignatures")
            return
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await follow(m, args.interval, stop, say)

    try:
        asyncio.run(main())
    except (Misbehaviour, Refused, TooLarge) as e:
        print(f"error: {e.explain()}", file=sys.stderr)
        return 1
    finally:
        m.close()
    return 0


def _verify_evidence(args: argparse.Namespace) -> int:
    from gateway.tlog.evidence import check_evidence

    try:
        what = check_evidence(Path(args.evidence), args.gateway_key)
    except AnchorError as e:
        print(f"FAIL: {e.explain()}")
        return 1
    print(f"OK: {what}")
    return 0
