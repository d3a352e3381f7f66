"""`Downlink`: seals acks and commands for devices and verifies their confirmations.

Keys: the gateway's P-256 downlink key (`storage.downlink_keyfile`); a device's MAC key is
HKDF over the ECDH of it with the device's registered key (`wire.downlink.device_key`), derived
once and kept (re-checked against the registry every KEY_RECHECK_S, so a rotated device key is
picked up).

Counters: every sealed message carries ctr = epoch * 2^32 + n, n counting per device from 1 in
this process, epoch taken durably from the store once per Downlink (`Store.downlink_epoch`:
above every earlier epoch, and at least the clock in seconds). So counters only grow per device
across restarts and SIGKILLs, with one store write per start instead of one per message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import ConfigError
from gateway.wire import downlink as wire
from gateway.wire.es256 import check_signature, load_public_key
from gateway.wire.topics import ack_topic, cmd_topic

KEY_RECHECK_S = 5.0
_N_MAX = 1 << 32

DeviceKeys = Callable[[str], bytes | None]  # device id -> its registered key (active), or None


class Downlink:
    """Sealing for every device of one gateway. `device_keys(dev)` gives a device's current
    public key (65 bytes) or None when it is unknown or revoked; `next_epoch()` a new durable
    epoch (Store.downlink_epoch)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, device_keys: DeviceKeys,
                 next_epoch: Callable[[], int],
                 on_close: Callable[[], None] | None = None) -> None:
        self._key = key
        self._on_close = on_close
        self._device_keys = device_keys
        self._next_epoch = next_epoch
        self._epoch = next_epoch()
        self._n: dict[str, int] = {}
        self._macs: dict[str, tuple[bytes, bytes, float]] = {}  # dev -> (pub, K, checked at)

    @classmethod
    def open(cls, data_dir: str | Path) -> Downlink:
        """The downlink of the gateway in `data_dir`: its key (made now if missing), the
        registry and the epoch from its store (a connection of its own)."""
        from gateway.storage import downlink_keyfile
        from gateway.storage.store import Store

        key = downlink_keyfile.load_or_create(data_dir)
        store = Store.open(data_dir)

        def device_keys(dev: str) -> bytes | None:
            row = store.device(dev)
            return bytes(row.key) if row is not None and row.status == "active" else None

        try:
            return cls(key, device_keys, lambda: store.downlink_epoch(int(time.time())),
                       on_close=store.close)
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        """Release what open() opened (its store connection)."""
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    @property
    def public_key(self) -> bytes:
        from gateway.storage.downlink_keyfile import public_bytes

        return public_bytes(self._key)

    def mac_key(self, dev: str) -> bytes:
        """Device `dev`'s MAC key; ConfigError when the device is not registered (active)."""
        now = time.monotonic()
        got = self._macs.get(dev)
        if got is not None and now - got[2] < KEY_RECHECK_S:
            return got[1]
        pub = self._device_keys(dev)
        if pub is None:
            raise ConfigError(f"device {dev!r} is not registered (or revoked)",
                              "register it with 'iot-anchor device add' first")
        if got is not None and got[0] == pub:
            self._macs[dev] = (pub, got[1], now)
            return got[1]
        z = self._key.exchange(ec.ECDH(), load_public_key(pub))
        k = wire.device_key(z, dev)
        self._macs[dev] = (pub, k, now)
        return k

    def _ctr(self, dev: str) -> int:
        n = self._n.get(dev, 0) + 1
        if n >= _N_MAX:  # 4 billion messages to one device in one run: a new epoch
            self._epoch = self._next_epoch()
            self._n.clear()
            n = 1
        self._n[dev] = n
        return self._epoch * _N_MAX + n

    def seal_ack(self, device: str, upto: int, seqs: Any, entry: int) -> bytes:
        """The sealed ack for anchor/<device>/ack."""
        k = self.mac_key(device)
        return wire.seal(k, ack_topic(device),
                         wire.ack_payload(self._ctr(device), upto, seqs, entry))

    def seal_command(self, cmd: wire.Command) -> bytes:
        """The sealed command for anchor/<device>/cmd."""
        k = self.mac_key(cmd.device)
        return wire.seal(k, cmd_topic(cmd.device), wire.command_payload(self._ctr(cmd.device),
                                                                        cmd))

    def verify_confirmation(self, device: str, payload: bytes) -> wire.Confirmation:
        """The confirmation `payload` from anchor/<device>/confirm, its signature checked
        against the device's registered key; wire.DownlinkError otherwise."""
        pub = self._device_keys(device)
        if pub is None:
            raise wire.DownlinkError("unknown_device", f"{device!r} is not registered")
        key = load_public_key(pub)
        return wire.decode_confirmation(device, payload,
                                        lambda tbs, sig: check_signature(key, tbs, sig))
