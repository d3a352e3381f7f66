"""The authenticated downlink's counters (gateway/downlink/): the durable epoch, a shared group's
per-device counters.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from gateway.errors import StorageError
from gateway.storage.core import (
    StoreCore,
    storage_error,
)


class DownlinkRows(StoreCore):
    # --- downlink (issue 15): the epoch of the downlink counters ------------------------------

    def downlink_epoch(self, now_s: int) -> int:
        """A new downlink epoch, durably: max(last + 1, now_s), stored before it is returned.
        Every sealed message's counter is epoch * 2^32 + n (gateway/downlink), so each start
        of the gateway counts above every counter it ever used, with one write per start; the
        clock term keeps that true after a backup of the database is restored."""
        with self.write() as c:
            row = c.execute("SELECT value FROM meta WHERE key = 'downlink_epoch'").fetchone()
            epoch = max(int(row[0]) + 1 if row else 0, now_s)
            if row:
                c.execute("UPDATE meta SET value = ? WHERE key = 'downlink_epoch'", (epoch,))
            else:
                c.execute("INSERT INTO meta (key, value) VALUES ('downlink_epoch', ?)", (epoch,))
        return epoch

    def next_downlink_counters(self, devices: Sequence[str],
                               epoch: int) -> dict[str, tuple[int, int]]:
        """Each device's next downlink counter for a gateway of a shared group, as (epoch, n):
        (epoch, 1) when the device's stored epoch is below `epoch` (or it has none), else the
        stored (epoch, n + 1). One atomic statement per 500 devices, outside the sequencer
        lock: two gateways never get one counter, and each device's counters only grow."""
        if self.readonly:
            raise StorageError(f"{self.location} is open read-only", "open it read-write")
        out: dict[str, tuple[int, int]] = {}
        devs = sorted(set(devices))  # one row once per statement; a fixed order of row locks
        with self.lock:
            try:
                for k in range(0, len(devs), 500):
                    part = devs[k:k + 500]
                    rows = self.conn.execute(
                        "INSERT INTO downlink_counters (dev, epoch, n) VALUES "
                        + ", ".join(["(?, ?, 1)"] * len(part))
                        + " ON CONFLICT (dev) DO UPDATE SET"
                        " n = CASE WHEN downlink_counters.epoch < excluded.epoch THEN 1"
                        " ELSE downlink_counters.n + 1 END,"
                        " epoch = CASE WHEN downlink_counters.epoch < excluded.epoch"
                        " THEN excluded.epoch ELSE downlink_counters.epoch END"
                        " RETURNING dev, epoch, n",
                        [v for d in part for v in (d, epoch)]).fetchall()
                    for dev, e, n in rows:
                        out[str(dev)] = (int(e), int(n))
            except sqlite3.Error as e:
                raise storage_error(e, self.path, "taking downlink counters") from e
        return out
