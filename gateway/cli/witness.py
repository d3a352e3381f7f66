"""`iot-anchor witness init --key FILE [--name NAME]` and `iot-anchor witness serve --key FILE
--http HOST:PORT --log VKEY...`: a C2SP tlog-witness."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from gateway.cli import Subcommands, add_data_arg
from gateway.errors import ConfigError
from gateway.ledger import note
from gateway.ledger.cosignature import format_witness_vkey, parse_witness_vkey
from gateway.storage import keyfile


def register(sub: Subcommands) -> None:
    p = sub.add_parser("witness", help="run a C2SP tlog-witness that cosigns gateway checkpoints")
    wsub = p.add_subparsers(dest="witness_command", metavar="ACTION")
    wsub.required = True

    i = wsub.add_parser(
        "init", help="create a witness key (Ed25519, mode 0600); prints its vkey last",
        description="Create the witness's Ed25519 key in FILE (PKCS#8 PEM, mode 0600; an "
                    "existing file is never overwritten) and FILE.vkey, and print the witness "
                    "vkey (C2SP tlog-cosignature, key type 0x04) on the last line: give it to "
                    "the gateway's --witness URL=VKEY and to verify-receipt --witness-key.")
    i.add_argument("--key", required=True, metavar="FILE", help="the key file to create")
    i.add_argument("--name", metavar="NAME",
                   help="the witness's name in its cosignatures (default "
                        "iot-anchor-witness/<16 hex digits of its key>)")
    add_data_arg(i)  # accepted for uniformity; the key goes to FILE
    i.set_defaults(func=_init)

    s = wsub.add_parser(
        "serve", help="cosign checkpoints of the given logs (POST /add-checkpoint)",
        description="Serve C2SP tlog-witness: POST /add-checkpoint cosigns a checkpoint only "
                    "if it is a consistent extension of the latest one this witness cosigned "
                    "for that log (state in DIR/witness.db, committed before answering); "
                    "GET /<sha256(origin) hex>/checkpoint returns the latest one cosigned. "
                    "SIGTERM or SIGINT stops it (exit 0).")
    s.add_argument("--key", required=True, metavar="FILE", help="the witness key (from init)")
    s.add_argument("--http", required=True, metavar="HOST:PORT", help="the address to listen on")
    s.add_argument("--log", required=True, nargs="+", metavar="VKEY",
                   help="the vkey of each log (gateway) to witness; its name is the origin")
    add_data_arg(s)
    s.set_defaults(func=_serve)


def _vkey_path(key: Path) -> Path:
    return key.with_name(key.name + ".vkey")


def _init(args: argparse.Namespace) -> int:
    key = note.generate_key()
    raw = note.public_key_bytes(key)
    name = args.name or "iot-anchor-witness/" + note.gateway_key_id(raw)
    vkey = format_witness_vkey(name, raw)  # checks the name before anything is written
    path = Path(args.key)
    keyfile.save_private_key(path, key)
    try:
        _vkey_path(path).write_text(vkey + "\n")
    except OSError as e:
        raise ConfigError(f"cannot write {_vkey_path(path)}: {e.strerror}",
                          "check the directory's permissions") from e
    print(f"witness key written to {path} (mode 0600), its vkey to {_vkey_path(path)}")
    print(vkey)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from gateway.http.access import parse_http_address
    from gateway.tlog.witness_server import Witness, run_witness
    from gateway.tlog.witness_state import WitnessState

    host, port = parse_http_address(args.http)
    path = Path(args.key)
    key = keyfile.load_private_key(path)
    try:
        me = parse_witness_vkey(_vkey_path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {_vkey_path(path)}: {e.strerror}",
                          "it is written next to the key by 'iot-anchor witness init'") from e
    if note.public_key_bytes(me.public) != note.public_key_bytes(key):
        raise ConfigError(f"{_vkey_path(path)} is not the vkey of {path}",
                          "restore the files written together by 'witness init'")
    logs: dict[str, str] = {}
    for v in args.log:
        name, _, _ = note.parse_vkey(v)
        logs[name] = v.strip()
    state = WitnessState(Path(args.data), logs)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_witness(Witness(key, me, state), host, port, stop)

    try:
        asyncio.run(main())
    finally:
        state.close()
    return 0
