"""`Downlink`: seals acks and commands for devices and verifies their confirmations.

Keys: the gateway's P-256 downlink key (`storage.downlink_keyfile`); a device's MAC key is
HKDF over the ECDH of it with the device's registered key (`wire.downlink.device_key`), derived
once and kept (re-checked against the registry every KEY_RECHECK_S, so a rotated device key is
picked up).

Counters: every sealed message carries ctr = epoch * 2^32 + n, n counting per device from 1 in
this process, epoch taken durably from the store once per Downlink (`Store.downlink_epoch`:
above every earlier epoch, and at least the clock in seconds). So counters only grow per device
across restarts and SIGKILLs, with one store write per start instead of one per message.

Shared (`run --shared`: several gateways send to one device): n comes from the store instead
(`Store.next_downlink_counters`, one statement per round of acks, taken by `reserve` before
the round is sealed), so a device sees one growing sequence whichever gateway sends; counters
of separate processes would sit epochs apart, and the device would refuse the lower ones as
stale.
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
# (devices, epoch) -> each device's next (epoch, n) from the group's store
SharedCounters = Callable[[list[str], int], dict[str, tuple[int, int]]]


class Downlink:
    """Sealing for every device of one gateway. `device_keys(dev)` gives a device's current
    public key (65 bytes) or None when it is unknown or revoked; `next_epoch()` a new durable
    epoch (Store.downlink_epoch)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, device_keys: DeviceKeys,
                 next_epoch: Callable[[], int],
                 on_close: Callable[[], None] | None = None,
                 shared_counters: SharedCounters | None = None) -> None:
        self._key = key
        self._on_close = on_close
        self._device_keys = device_keys
        self._next_epoch = next_epoch
        self._epoch = next_epoch()
        self._n: dict[str, int] = {}
        self._shared = shared_counters
        self._reserved: dict[str, int] = {}  # shared: dev -> its next counter, from reserve()
        self._macs: dict[str, tuple[bytes, bytes, float]] = {}  # dev -> (pub, K, checked at)

    @classmethod
    def open(cls, data_dir: str | Path, *, shared: bool = False) -> Downlink:
        """The downlink of the gateway in `data_dir`: its key (made now if missing), the
        registry and the epoch from its store (a connection of its own); `shared`: the
        counters from the store too (`run --shared`)."""
        from gateway.storage import downlink_keyfile
        from gateway.storage.store import Store

        key = downlink_keyfile.load_or_create(data_dir)
        store = Store.open(data_dir)

        def device_keys(dev: str) -> bytes | None:
            row = store.device(dev)
            return bytes(row.key) if row is not None and row.status == "active" else None

        try:
            return cls(key, device_keys, lambda: store.downlink_epoch(int(time.time())),
                       on_close=store.close,
                       shared_counters=store.next_downlink_counters if shared else None)
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

    @property
    def shared(self) -> bool:
        """The counters come from the store (reserve before sealing)."""
        return self._shared is not None

    def reserve(self, devices: list[str]) -> None:
        """Shared: take the next counter of each device from the store (blocking: call it
        off the event loop), for the next seal_ack / seal_command to it. A no-op otherwise."""
        if self._shared is None or not devices:
            return
        got = self._shared(devices, self._epoch)
        if any(n >= _N_MAX for _, n in got.values()):  # 4 billion to one device: a new epoch
            self._epoch = self._next_epoch()
            got = self._shared(devices, self._epoch)
        for dev, (epoch, n) in got.items():
            self._reserved[dev] = epoch * _N_MAX + n

    def missing(self, devices: list[str]) -> list[str]:
        """Shared: those of `devices` with no counter reserved (reserve them first)."""
        if self._shared is None:
            return []
        return [d for d in devices if d not in self._reserved]

    def _ctr(self, dev: str) -> int:
        if self._shared is not None:
            ctr = self._reserved.pop(dev, None)
            if ctr is None:
                raise ConfigError(f"no downlink counter reserved for {dev!r}",
                                  "a shared gateway reserves counters before it seals; "
                                  "this is a bug in the caller")
            return ctr
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
