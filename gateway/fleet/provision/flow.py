"""The provisioning flow: `provision()` runs the steps in order (the package docstring lists
them) with its `Options`, and returns a `Result`."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import ConfigError
from gateway.fleet import registry
from gateway.fleet.provision import checks
from gateway.fleet.provision.board_paths import CONFIG_PATH
from gateway.fleet.provision.compile import choose_mpy_cross, compile_firmware
from gateway.fleet.provision.first_reading import wait_first_reading
from gateway.fleet.provision.install import install
from gateway.fleet.provision.keys import ensure_key, register_key
from gateway.fleet.provision.transport import BoardInfo, BoardTransport


@dataclass
class Options:
    """What to provision: the device id, the network and broker the board joins, the gateway's
    data directory, and the board's config."""

    dev_id: str
    wifi_ssid: str
    wifi_password: str
    broker: str
    data: str  # the gateway's data directory
    new_key: bool = False
    interval: float = 60
    sensors: list[str] = field(default_factory=lambda: ["mcu"])
    board_config: dict[str, object] = field(default_factory=dict)  # more /anchor.json keys
    wait: float = 120  # seconds to wait for the first reading
    platforms: Sequence[str] = checks.SUPPORTED_PLATFORMS
    check_network: bool = True


@dataclass
class Result:
    """What provisioning did: the board, its key, the registration, the first reading."""

    info: BoardInfo
    public_key: bytes
    key_was_new: bool
    registered: str  # "add", "rotate" or "unchanged"
    files: int
    first_seq: int | None = None
    first_ts: int | None = None


def board_config(opts: Options) -> dict[str, object]:
    """The board's /anchor.json: the options' keys, then opts.board_config's over them."""
    cfg: dict[str, object] = {"id": opts.dev_id, "wifi_ssid": opts.wifi_ssid,
                              "wifi_password": opts.wifi_password, "broker": opts.broker,
                              "interval": opts.interval, "sensors": list(opts.sensors)}
    cfg.update(opts.board_config)
    return cfg


def downlink_public_key(data: str) -> bytes:
    """The gateway's downlink public key (DATA/downlink.key, made if missing in an existing
    data directory); ConfigError when DATA is not a directory."""
    from gateway.storage import downlink_keyfile

    if not Path(data).is_dir():
        raise ConfigError(f"no gateway data directory at {data}",
                          f"create it with 'iot-anchor init --data {data}', or give --data")
    return downlink_keyfile.public_bytes(downlink_keyfile.load_or_create(data))


def provision(board: BoardTransport, opts: Options,
              say: Callable[[str], None] = print) -> Result:
    """All the steps, in order (see gateway.fleet.provision's docstring); `say` reports each.
    Raises ProvisionError (or another AnchorError) naming the step that failed."""
    registry.check_device_id(opts.dev_id)
    broker = checks.parse_broker(opts.broker)
    checks.check_broker_from_host(opts.broker)
    info = board.info()
    checks.check_board(info, opts.platforms)
    board.hold()
    say(f"board: MicroPython {info.version_text} on {info.platform} ({info.machine}), "
        f".mpy v{info.mpy_version[0]}.{info.mpy_version[1]}, {info.free} bytes free")
    exe = choose_mpy_cross(info.mpy_version)
    with tempfile.TemporaryDirectory(prefix="iot-anchor-mpy-") as tmp:
        files = compile_firmware(exe, Path(tmp))
    cfg = board_config(opts)
    install(board, files, cfg)
    say(f"copied {len(files)} files (compiled with {exe}) and wrote /{CONFIG_PATH}")
    if opts.check_network:
        ip = checks.check_wifi(board)
        say(f"Wi-Fi: joined '{opts.wifi_ssid}' as {ip}")
        checks.check_broker_from_board(board, opts.broker)
        say(f"broker: {broker.host}:{broker.port} reachable from the board")
    state_dir = str(cfg.get("dir", "data")).strip("/") or "data"
    pub, fresh, next_seq = ensure_key(board, opts.dev_id, state_dir, opts.new_key,
                                      downlink_public_key(opts.data))
    say(f"key: {'generated on the board' if fresh else 'kept (the board already had it)'}; "
        f"public key {pub.hex()[:24]}...; the gateway's downlink key given to it")
    action = register_key(opts.data, opts.dev_id, pub, opts.new_key)
    say({"add": f"registered '{opts.dev_id}' with the gateway",
         "rotate": f"registered the new key of '{opts.dev_id}' (rotation)",
         "unchanged": f"'{opts.dev_id}' was already registered with this key"}[action])
    result = Result(info, pub, fresh, action, len(files))
    board.release()
    say(f"resetting the board; waiting up to {opts.wait:.0f} s for its first signed reading")
    d = wait_first_reading(opts.broker, opts.dev_id, pub, opts.wait, min_seq=next_seq,
                           on_ready=board.reset)
    result.first_seq, result.first_ts = d.seq, d.ts
    say(f"first reading: seq {d.seq}, ts {d.ts}, data {d.data} -- signature verified")
    return result
