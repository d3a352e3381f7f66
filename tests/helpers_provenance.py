"""Ledgers with signed readings, and the edits an attacker makes to an exported dataset
(each keeping croissant.json's digests true, so only the provenance can catch it)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from helpers_readings import Device

from gateway.fleet import registry
from gateway.ingest.pipeline import Pipeline
from gateway.storage.store import Store

DATA = "data/readings.parquet"
READINGS = "provenance/readings.bin"


def anchored_ledger(d: Path, devices: int = 3, per_device: int = 40, batch_max: int = 25,
                    ) -> tuple[str, list[Device], dict[str, list[bytes]]]:
    """A data dir with `devices` devices, each with `per_device` readings anchored in small
    batches, interleaved; every 5th reading without ts, every 3rd with a sensor 'spo2'.
    Returns (vkey, devices, {device: its messages in seq order})."""
    store, vkey = Store.create(d)
    devs = [Device(f"ward-{i}") for i in range(devices)]
    msgs: dict[str, list[bytes]] = {dv.id: [] for dv in devs}
    with store:
        for dv in devs:
            registry.add(store, dv.id, dv.public_bytes)
        pipe = Pipeline(store, workers=1, batch_max=batch_max)
        try:
            for k in range(per_device):
                chunk = []
                for dv in devs:
                    data: dict[str, Any] = {"temp": 36 + (k % 8) / 4, "hr": 60 + k % 30}
                    if k % 3 == 0:
                        data["spo2"] = 95 + k % 5
                    m = dv.next(data, None if k % 5 == 4 else 1_735_689_600 + 60 * k)
                    msgs[dv.id].append(m)
                    chunk.append(m)
                pipe.submit(chunk)
                if k % 7 == 6:
                    pipe.commit()
            pipe.commit()
        finally:
            pipe.close()
    return vkey, devs, msgs


def fix_digest(out: Path, rel: str) -> None:
    """Make croissant.json's sha256 of `rel` match the file again."""
    meta_path = out / "croissant.json"
    meta = json.loads(meta_path.read_text())
    digest = hashlib.sha256((out / rel).read_bytes()).hexdigest()
    for item in meta["distribution"]:
        if item["contentUrl"] == rel:
            item["sha256"] = digest
    meta_path.write_text(json.dumps(meta, indent=1))


def edit_rows(out: Path, fn: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    """Rewrite the Parquet rows through fn (same schema) and fix the digest."""
    path = out / DATA
    table = pq.read_table(path)
    rows = fn(table.to_pylist())
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    fix_digest(out, DATA)


def read_messages(out: Path) -> list[bytes]:
    raw = (out / READINGS).read_bytes()
    out_: list[bytes] = []
    i = 0
    while i < len(raw):
        n = int.from_bytes(raw[i:i + 4], "big")
        out_.append(raw[i + 4:i + 4 + n])
        i += 4 + n
    return out_


def edit_messages(out: Path, fn: Callable[[list[bytes]], list[bytes]]) -> None:
    msgs = fn(read_messages(out))
    (out / READINGS).write_bytes(b"".join(len(m).to_bytes(4, "big") + m for m in msgs))
    fix_digest(out, READINGS)
