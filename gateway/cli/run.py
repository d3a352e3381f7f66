"""`iot-anchor run [--broker URL] [--batch-interval S] [--batch-max N] [--shared GROUP]`: the
MQTT service."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli import Subcommands, add_data_arg
from gateway.cli.serve import add_http_args
from gateway.errors import ConfigError
from gateway.http.access import check_bind, load_token, parse_http_address
from gateway.service.config import DEFAULT_BROKER, ServiceConfig
from gateway.service.runner import run_service

if TYPE_CHECKING:
    from gateway.ingest.pipeline import Pipeline


def default_broker() -> str:
    return os.environ.get("IOT_ANCHOR_BROKER", DEFAULT_BROKER)


def add_broker_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", metavar="URL", default=default_broker(),
                   help="MQTT broker, mqtt://HOST:PORT (default: $IOT_ANCHOR_BROKER, "
                        f"else {DEFAULT_BROKER})")


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "run", help="run the gateway: anchor readings arriving over MQTT",
        description="Subscribe to anchor/+/readings (QoS 1, persistent session), verify and "
                    "anchor the readings in batches, then acknowledge them on anchor/<id>/ack "
                    "(sealed for each device with the downlink key, DATA/downlink.key) and "
                    "publish the signed checkpoint (retained) on anchor/checkpoint; verify "
                    "the devices' confirmations of commands on anchor/+/confirm. "
                    "SIGTERM or SIGINT commits the open batch and exits 0.")
    add_data_arg(p)
    add_broker_arg(p)
    p.add_argument("--batch-interval", metavar="S", type=float, default=1.0,
                   help="close a batch after S seconds (default 1)")
    p.add_argument("--batch-max", metavar="N", type=int, default=4096,
                   help="close a batch at N readings (default 4096)")
    p.add_argument("--puback", choices=("commit", "receipt"), default="commit",
                   help="when the broker gets its PUBACK: after the batch commits (default; "
                        "the broker redelivers what a crashed gateway had not committed), or on "
                        "receipt (for brokers whose in-flight limit cannot be raised)")
    add_http_args(p, default=None)
    p.add_argument("--witness", metavar="URL=VKEY", action="append", default=[],
                   help="send each new checkpoint to this C2SP tlog-witness (repeatable); "
                        "VKEY is printed by 'iot-anchor witness init'")
    p.add_argument("--witness-quorum", metavar="K", type=int,
                   help="cosignatures a checkpoint needs to count as witnessed in 'ledger "
                        "status' (default: all the witnesses)")
    p.add_argument("--shared", metavar="GROUP",
                   help="one of several gateways on one PostgreSQL ledger (--store): subscribe "
                        "to $share/GROUP/anchor/+/readings (MQTT 5, clean session), so the "
                        "broker spreads the readings over the group; every gateway of the group "
                        "has the same gateway.key and downlink.key in its DIR")
    p.set_defaults(func=cmd_run)


def pipeline_factory(data_dir: Path, batch_max: int,
                     shared: str | None = None) -> Callable[[], Pipeline]:
    def make() -> Pipeline:
        from gateway.ingest.pipeline import Pipeline
        from gateway.storage.store import Store

        store = Store.open(data_dir)
        try:
            if shared is not None:
                if not store.concurrent:
                    raise ConfigError(
                        f"--shared needs a store that several gateways can share, and "
                        f"{store.location} is a SQLite file",
                        "give --store postgresql://USER@HOST/DB (made with 'iot-anchor init "
                        "--store'), or run one gateway without --shared")
                store.load_signer()  # the group's key first: a wrong one claims nothing
                store.claim_shared_group(shared)
            pipe = Pipeline(store, batch_max=batch_max, owns_store=True)
            pipe.pool.start()  # the verifier processes get ready before the first message
            return pipe
        except BaseException:
            store.close()
            raise

    return make


def cmd_run(args: argparse.Namespace) -> int:
    cfg = ServiceConfig(data_dir=Path(args.data), broker=args.broker,
                        batch_interval=args.batch_interval, batch_max=args.batch_max,
                        puback=args.puback, shared=args.shared)
    if args.http:
        cfg.http = parse_http_address(args.http)
        cfg.http_token = load_token(args.http_token, args.http_token_file)
        check_bind(cfg.http[0], cfg.http_token)
    if args.witness_quorum is not None and not args.witness:
        raise ConfigError("--witness-quorum needs --witness URL=VKEY", "add the witnesses")
    if args.witness:
        from gateway.tlog.witness_client import WitnessClient, parse_witness_arg

        cfg.witnesses = [parse_witness_arg(w) for w in args.witness]
        cfg.witness_quorum = args.witness_quorum
        WitnessClient(cfg.data_dir, cfg.witnesses, cfg.witness_quorum)  # checks the options
    if not args.http and (args.http_token or args.http_token_file):
        raise ConfigError("--http-token and --http-token-file need --http HOST:PORT",
                          "add --http, or drop the token")
    if cfg.shared is not None and cfg.puback != "commit":
        raise ConfigError("--shared needs --puback commit",
                          "leave --puback out: a shared gateway PUBACKs after its commit")
    return run_service(cfg, pipeline_factory(cfg.data_dir, cfg.batch_max, cfg.shared))
