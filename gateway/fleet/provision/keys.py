"""The device's key: generated on the board (the private key never leaves it), then registered
with the gateway as `iot-anchor device add` does, or rotated."""

from __future__ import annotations

import ast

from gateway.fleet import registry
from gateway.fleet.provision import onboard
from gateway.fleet.provision.errors import ProvisionError
from gateway.fleet.provision.transport import BoardTransport
from gateway.storage.store import Store


def ensure_key(board: BoardTransport, dev_id: str, state_dir: str,
               new_key: bool, downlink_key: bytes | None = None) -> tuple[bytes, bool, int]:
    """Generate the key on the board in `state_dir` (or keep its key, unless `new_key`), and
    give it the gateway's downlink key (its MAC key is derived on the board): the public key,
    whether it is new, and the next seq the board will sign. Only public keys cross the wire.
    ProvisionError when the board holds the key of another device id."""
    out = board.exec(onboard.code("key", "ensure_key", state_dir, new_key, dev_id,
                                  downlink_key.hex() if downlink_key else None), timeout=120)
    fresh, have_id, pub_hex, next_seq = ast.literal_eval(out.strip().splitlines()[-1])
    if have_id != dev_id:
        raise ProvisionError(
            f"the board already holds the key of device '{have_id}', not '{dev_id}'",
            f"provision it as '{have_id}', or give --new-key to replace its key (the old "
            f"device's readings stay verifiable)",
        )
    return bytes.fromhex(pub_hex), bool(fresh), int(next_seq)


def register_key(data: str, dev_id: str, key: bytes, new_key: bool) -> str:
    """Register `key` for `dev_id` in the gateway's data directory `data` like `device add`
    (or rotate it, with `new_key`); "add", "rotate" or "unchanged"."""
    with Store.open(data) as store:
        row = store.device(dev_id)
        if row is None:
            registry.add(store, dev_id, key)
            return "add"
        if row.status != "active":
            raise ProvisionError(f"device '{dev_id}' is revoked at the gateway",
                                 "a revoked id cannot come back; provision under a new id")
        if bytes(row.key) == key:
            return "unchanged"
        if not new_key:
            raise ProvisionError(
                f"the board's key for '{dev_id}' differs from the key registered at the gateway",
                "if the board was wiped, provision again with --new-key to register its new "
                "key (a rotation); otherwise check that this is the right board",
            )
        registry.rotate(store, dev_id, key)
        return "rotate"
