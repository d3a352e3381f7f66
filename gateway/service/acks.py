"""The devices' acks waiting to be published: one per device, coalesced.

A device that gets several acks before the first leaves needs only one: `upto` the highest,
`seqs` the union of those above it, `entry` the newest. So what waits is bounded by the number
of devices, however long the broker keeps the service from publishing.
"""

from __future__ import annotations

from collections.abc import Iterable

Waiting = tuple[int, set[int], int]  # upto, seqs above it, entry


class AckOutbox:
    def __init__(self) -> None:
        self._acks: dict[str, Waiting] = {}

    def __len__(self) -> int:
        return len(self._acks)

    def __bool__(self) -> bool:
        return bool(self._acks)

    def merge(self, dev: str, upto: int, seqs: Iterable[int], entry: int) -> None:
        old = self._acks.get(dev)
        if old is None:
            self._acks[dev] = (upto, set(seqs), entry)
            return
        new_upto = max(upto, old[0])
        merged = {s for s in old[1] if s > new_upto}
        merged.update(s for s in seqs if s > new_upto)
        self._acks[dev] = (new_upto, merged, max(entry, old[2]))

    def devices(self) -> list[str]:
        """The devices with an ack waiting, oldest first."""
        return list(self._acks)

    def take(self, most: int) -> list[tuple[str, Waiting]]:
        """Up to `most` acks, oldest device first; the rest keep waiting."""
        if most >= len(self._acks):
            items = list(self._acks.items())
            self._acks = {}
            return items
        items = []
        for dev in list(self._acks)[:most]:
            items.append((dev, self._acks.pop(dev)))
        return items

    def put_back(self, items: Iterable[tuple[str, Waiting]]) -> None:
        for dev, (upto, seqs, entry) in items:
            self.merge(dev, upto, seqs, entry)
