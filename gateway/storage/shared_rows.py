"""Several gateways on one ledger (`run --shared`): the ledger's one shared-subscription group.
"""

from __future__ import annotations

from gateway.errors import ConfigError
from gateway.storage.core import (
    StoreCore,
)


class SharedGroupRows(StoreCore):
    # --- several gateways on one ledger (#18: run --shared) -----------------------------------

    def registry_version(self) -> int:
        """The index of the newest device entry (-1: none): it changes with every registry
        change (add, revoke, rotate), and with nothing else."""
        row = self.one("SELECT MAX(i) FROM entries WHERE kind = 'device'")
        return -1 if row is None or row[0] is None else int(row[0])

    def claim_shared_group(self, group: str) -> None:
        """`run --shared GROUP`: record GROUP as the ledger's one shared-subscription group
        (meta ``shared_group``), or check that it is the recorded one. Two groups on one
        ledger would each receive every reading."""
        with self.write() as c:
            row = c.execute("SELECT value FROM meta WHERE key = 'shared_group'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta (key, value) VALUES ('shared_group', ?)", (group,))
                return
        if str(row[0]) != group:
            raise ConfigError(
                f"the ledger in {self.location} belongs to the shared group {row[0]!r}, not "
                f"{group!r}", f"give --shared {row[0]} (one ledger, one group: two groups "
                "would each get every reading); to move the ledger to another group, stop the "
                f"gateways of {row[0]!r} and run 'iot-anchor store group --set {group}'")

    def set_shared_group(self, group: str | None) -> None:
        """`store group --set GROUP` / `--clear`: the recorded group, changed by the operator."""
        with self.write() as c:
            c.execute("DELETE FROM meta WHERE key = 'shared_group'")
            if group is not None:
                c.execute("INSERT INTO meta (key, value) VALUES ('shared_group', ?)", (group,))
