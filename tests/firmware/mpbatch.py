"""Run firmware/tests/crosscheck.py under MicroPython: many requests, one process."""

from __future__ import annotations

import json
import struct
import subprocess
from typing import Any

import cbor2
from conftest import FIRMWARE, ROOT

SCRIPT = FIRMWARE / "tests" / "crosscheck.py"


def batch(micropython: str, requests: list[dict[str, Any]], timeout: float = 300,
          heapsize: str | None = None) -> list[dict[str, Any]]:
    cmd = [micropython] + (["-X", f"heapsize={heapsize}"] if heapsize else []) + [str(SCRIPT)]
    stdin = "".join(json.dumps(r) + "\n" for r in requests)
    p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout,
                       cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    out = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
    assert len(out) == len(requests), p.stdout[-2000:] + p.stderr[-2000:]
    return out


def tag(v: Any) -> list[Any]:
    """The tagged JSON form that crosscheck.py reads (exact ints, float bits, bytes, tags)."""
    if v is True:
        return ["T"]
    if v is False:
        return ["F"]
    if v is None:
        return ["N"]
    if isinstance(v, int):
        return ["i", str(v)]
    if isinstance(v, float):
        return ["f", struct.pack(">d", v).hex()]
    if isinstance(v, str):
        return ["s", v]
    if isinstance(v, bytes):
        return ["b", v.hex()]
    if isinstance(v, list | tuple):
        return ["l", [tag(x) for x in v]]
    if isinstance(v, dict):
        return ["m", [[tag(a), tag(b)] for a, b in v.items()]]
    if isinstance(v, cbor2.CBORTag):
        return ["t", v.tag, tag(v.value)]
    raise TypeError(type(v))


def untag(t: list[Any]) -> Any:
    k = t[0]
    if k == "i":
        return int(t[1])
    if k == "f":
        return struct.unpack(">d", bytes.fromhex(t[1]))[0]
    if k == "s":
        return t[1]
    if k == "b":
        return bytes.fromhex(t[1])
    if k == "l":
        return [untag(x) for x in t[1]]
    if k == "m":
        return {untag(a): untag(b) for a, b in t[1]}
    if k == "t":
        return cbor2.CBORTag(t[1], untag(t[2]))
    return {"T": True, "F": False, "N": None}[k]
