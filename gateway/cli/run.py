"""`iot-anchor run [--broker URL] [--batch-interval S] [--batch-max N]`: the MQTT service."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli import Subcommands, add_data_arg
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
    p.set_defaults(func=cmd_run)


def pipeline_factory(data_dir: Path, batch_max: int) -> Callable[[], Pipeline]:
    def make() -> Pipeline:
        from gateway.ingest.pipeline import Pipeline
        from gateway.storage.store import Store

        store = Store.open(data_dir)
        try:
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
                        puback=args.puback)
    return run_service(cfg, pipeline_factory(cfg.data_dir, cfg.batch_max))
