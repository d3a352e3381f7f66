"""`iot-anchor simulate --devices N [--interval S] [--duration S] [--broker URL]`."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
from pathlib import Path

from gateway.cli import Subcommands, add_data_arg
from gateway.cli.run import add_broker_arg
from gateway.sim.simulate import run_cpython, run_micropython, running_gateway


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "simulate", help="run a fleet of simulated devices against a running gateway",
        description="Create N devices (keys registered in the data dir), run them for "
                    "--duration seconds, wait until every outbox is acknowledged, and report "
                    "per device: produced, acknowledged. Exits 0 only if everything was "
                    "acknowledged. The gateway ('iot-anchor run') must be running.")
    add_data_arg(p)
    add_broker_arg(p)
    p.add_argument("--devices", metavar="N", type=int, required=True, help="number of devices")
    p.add_argument("--interval", metavar="S", type=float, default=1.0,
                   help="seconds between readings per device (default 1; 0 = as fast as "
                        "possible, with --count)")
    p.add_argument("--duration", metavar="S", type=float, default=10.0,
                   help="seconds the devices produce readings (default 10)")
    p.add_argument("--engine", choices=("micropython", "cpython"), default="micropython",
                   help="real firmware under the MicroPython Unix port (default), or the "
                        "CPython load engine (pre-signed, identical bytes) for scale tests")
    p.add_argument("--count", metavar="N", type=int, default=None,
                   help="readings per device (default: duration / interval)")
    p.add_argument("--procs", metavar="P", type=int, default=min(4, os.cpu_count() or 1),
                   help="cpython engine: worker processes sharing the connections "
                        "(default: CPU count, at most 4)")
    p.add_argument("--drain-timeout", metavar="S", type=float, default=60.0,
                   help="seconds to wait after production for every outbox to be "
                        "acknowledged (default 60)")
    p.add_argument("--ack-timeout", metavar="S", type=float, default=10.0,
                   help="a device publishes a reading again when no ack came within S seconds, "
                        "or twice the smoothed delay of its acks when that is longer (at most "
                        "8 x S), as the firmware does (default 10)")
    p.add_argument("--fleet-dir", metavar="DIR", default=None,
                   help="where the devices' state lives (default DATA/fleet)")
    p.add_argument("--with-gateway", action="store_true",
                   help="also run the gateway ('iot-anchor run' on the same --data and "
                        "--broker) for the simulation, and stop it afterwards")
    p.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    data = Path(args.data)
    fleet = Path(args.fleet_dir) if args.fleet_dir else data / "fleet"
    with contextlib.ExitStack() as stack:
        if args.with_gateway:
            log = fleet / "gateway.log"
            stack.enter_context(running_gateway(data, args.broker, log))
            print(f"simulate: gateway running (log {log})")
        if args.engine == "cpython":
            res = run_cpython(data, fleet, args.devices, args.interval, args.duration,
                              args.broker, args.drain_timeout, args.count, args.procs,
                              args.ack_timeout)
        else:
            res = run_micropython(data, fleet, args.devices, args.interval, args.duration,
                                  args.broker, args.drain_timeout, args.ack_timeout, args.count)
    res.print()
    if res.figures.get("interrupted"):
        return 130
    return 0 if res.ok else 1


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops the devices and workers like Ctrl-C does (the `finally` blocks run)."""
    raise KeyboardInterrupt
