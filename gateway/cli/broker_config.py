"""`iot-anchor broker-config`: a Mosquitto config with passwords and per-device ACLs.

The devices come from `--device ID` options, or else from the device registry in the data
directory (revoked devices are left out, so re-running the command after `device revoke` and
reloading the broker with SIGHUP shuts a revoked device out of the broker too).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gateway.cli import Subcommands, add_data_arg
from gateway.errors import ConfigError
from gateway.fleet.brokerconf import (
    CREDENTIALS_FILE,
    DEFAULT_LISTENER,
    DEFAULT_MAX_PACKET,
    GATEWAY_USER,
    TlsFiles,
    load_credentials,
    parse_listener,
    write_broker_config,
)


def register(subparsers: Subcommands) -> None:
    p = subparsers.add_parser(
        "broker-config",
        help="write a Mosquitto config with a password file and per-device ACLs",
        description=(
            "Write mosquitto.conf, passwd and acl so that each device may publish only to "
            "anchor/<id>/readings and anchor/<id>/status and read only anchor/<id>/ack and "
            "anchor/checkpoint, and only the gateway may publish acks and checkpoints. "
            "Passwords are random, kept in DIR/broker-credentials.json (mode 0600) and kept "
            "across runs; print one client's URL with --show."
        ),
    )
    add_data_arg(p)
    p.add_argument("--out", metavar="DIR",
                   help="folder for mosquitto.conf, passwd, acl and the broker's persistence "
                        "(default: DATA/broker)")
    p.add_argument("--listener", metavar="URL", action="append",
                   help="mqtt://HOST:PORT or mqtts://HOST:PORT; repeat for several "
                        f"(default: $IOT_ANCHOR_BROKER_LISTENER, else {DEFAULT_LISTENER}: "
                        "local clients only; use 0.0.0.0 to reach boards on the network)")
    p.add_argument("--tls-cert", metavar="FILE", help="server certificate chain (PEM) for mqtts")
    p.add_argument("--tls-key", metavar="FILE", help="server private key (PEM) for mqtts")
    p.add_argument("--tls-cafile", metavar="FILE",
                   help="CA certificate(s) (PEM) the broker presents with its chain")
    p.add_argument("--device", metavar="ID", action="append",
                   help="a device id to admit (repeat); default: the active devices of the "
                        "registry in DATA")
    p.add_argument("--gateway-user", metavar="NAME", default=GATEWAY_USER,
                   help=f"the gateway's MQTT username (default: {GATEWAY_USER})")
    p.add_argument("--rotate", metavar="USER", action="append", default=[],
                   help="give this device (or the gateway user) a new password (repeat)")
    p.add_argument("--run-as", metavar="USER",
                   help="the user Mosquitto switches to when started as root (its default is "
                        "'mosquitto'; 'root' keeps root, for tests only)")
    p.add_argument("--max-packet-size", metavar="BYTES", type=int, default=DEFAULT_MAX_PACKET,
                   help=f"the broker drops bigger packets (default: {DEFAULT_MAX_PACKET})")
    p.add_argument("--show", metavar="USER",
                   help="print USER's connection URL (with its password) and write nothing")
    p.set_defaults(func=run)


def registered_devices(data: Path) -> list[str]:
    """The active (not revoked) device ids of the registry in `data`."""
    from gateway.storage.store import Store

    with Store.open(data, readonly=True) as store:
        return [d.id for d in store.devices() if d.status == "active"]


def run(args: argparse.Namespace) -> int:
    data = Path(args.data)
    creds_path = data / CREDENTIALS_FILE
    if args.show:
        creds = load_credentials(creds_path)
        if creds is None:
            raise ConfigError(
                f"no broker credentials in {data}",
                "run 'iot-anchor broker-config' first",
            )
        print(creds.url_for(args.show))
        return 0
    if not data.is_dir():
        raise ConfigError(
            f"data directory {data} does not exist",
            "run 'iot-anchor init' first, or give --data",
        )
    listeners = [
        parse_listener(u)
        for u in (args.listener
                  or [os.environ.get("IOT_ANCHOR_BROKER_LISTENER") or DEFAULT_LISTENER])
    ]
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ConfigError("TLS needs both a certificate and its key",
                              "give --tls-cert FILE and --tls-key FILE")
        tls = TlsFiles(Path(args.tls_cert).resolve(), Path(args.tls_key).resolve(),
                       Path(args.tls_cafile).resolve() if args.tls_cafile else None)
    elif args.tls_cafile:
        raise ConfigError("--tls-cafile needs --tls-cert and --tls-key",
                          "give the server certificate and key too")
    devices = args.device if args.device else registered_devices(data)
    cfg = write_broker_config(
        Path(args.out) if args.out else data / "broker",
        creds_path,
        devices,
        listeners=listeners,
        tls=tls,
        gateway_user=args.gateway_user,
        rotate=args.rotate,
        run_as=args.run_as,
        max_packet_size=args.max_packet_size,
    )
    out = cfg.conf.parent
    print(f"wrote {cfg.conf}, {out / 'passwd'} and {out / 'acl'}: "
          f"the gateway and {len(cfg.creds.devices)} device(s)")
    if cfg.new_users:
        print(f"new passwords for: {', '.join(cfg.new_users)}")
    if cfg.removed_users:
        print(f"removed (no longer registered or active): {', '.join(cfg.removed_users)}")
    if not cfg.creds.devices:
        print("no devices yet: register them with 'iot-anchor device add', then run this again")
    print(f"passwords: {cfg.credentials} (mode 0600)")
    print(f"listening on: {', '.join(lst.url for lst in cfg.listeners)}")
    print(f"start the broker:   mosquitto -c {cfg.conf}")
    print("  (a running broker re-reads passwd and acl on SIGHUP)")
    show = f"iot-anchor broker-config --data {data} --show"
    print(f"gateway URL:        {show} {cfg.creds.gateway_user}")
    print(f"a device's URL:     {show} DEVICE_ID")
    return 0
