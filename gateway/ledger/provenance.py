"""The record kinds of training-data and model provenance: `dataset` and `model` entries.

dataset (written by `iot-anchor dataset export`)::

    {..., "kind": "dataset", "name": tstr, "rows": uint >= 1,
     "root": h32,        RFC 6962 root over the rows' COSE messages in row order
     "selection": {"devices": [* tstr], "sensors": [* tstr], "below": uint,
                   ? "since": uint, ? "until": uint},
     "files": [+ {"path": tstr, "sha256": h32}]}     the data files, sorted by path

  The selection is a function of the ledger: the readings anchored in batch entries with
  index < "below" whose device is in "devices" (all when empty), whose ts is in
  [since, until) (unix seconds; a bound excludes readings without ts) and that hold at least
  one of "sensors" (all readings when empty), in (device, seq) order. So the rows can be
  recomputed from the ledger at any later time (`ledger verify` does).

model (written by `iot-anchor model register`)::

    {..., "kind": "model", "name": tstr, "version": tstr,
     "digest": h32,      the model's manifest digest (the in-toto statement's subject digest)
     "datasets": [* uint],               ledger indices of dataset entries it was trained on
     ? "parent": tstr,                   the name's previous version; absent for the first
     ? "owner": bstr .size 65}           the owner's P-256 key (SEC1), when the owner signed

Importing this module registers both kinds in `entry.RECORD_KINDS` (gateway/ledger/__init__.py
imports it, so every user of the ledger knows them).
"""

from __future__ import annotations

import re
from typing import Any

from gateway.ledger.entry import RECORD_KINDS, EntryError, RecordKind
from gateway.ledger.merkle import HASH_SIZE

__all__ = ["DATASET", "MODEL", "NAME_RE", "check_name", "check_version"]

DATASET = "dataset"
MODEL = "model"
MAX_NAME = 128
# names and versions: what is safe in a file name (NAME-VER.provenance.json)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_MAX_UINT64 = (1 << 64) - 1


def check_name(value: Any, what: str = "name") -> str:
    if type(value) is not str or not NAME_RE.fullmatch(value):
        raise EntryError(f"{what} {value!r} must be 1 to {MAX_NAME} characters from "
                         "A-Z a-z 0-9 . _ + - starting with a letter or digit",
                         f"choose another {what}")
    return value


def check_version(value: Any) -> str:
    return check_name(value, "version")


def _uint(value: Any, what: str, minimum: int = 0) -> int:
    if type(value) is not int or not minimum <= value <= _MAX_UINT64:
        raise EntryError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _h32(value: Any, what: str) -> bytes:
    if type(value) is not bytes or len(value) != HASH_SIZE:
        raise EntryError(f"{what} must be {HASH_SIZE} bytes")
    return value


def _texts(value: Any, what: str) -> list[str]:
    if type(value) is not list or not all(type(v) is str and v for v in value):
        raise EntryError(f"{what} must be a list of non-empty texts")
    if value != sorted(set(value)):
        raise EntryError(f"{what} must be sorted and without repeats")
    return value


_SELECTION_KEYS = frozenset({"devices", "sensors", "below"})
_SELECTION_OPTIONAL = frozenset({"since", "until"})


def _check_dataset(f: dict[str, Any]) -> None:
    check_name(f["name"])
    _uint(f["rows"], "dataset entry field 'rows'", 1)
    _h32(f["root"], "dataset entry field 'root'")
    sel = f["selection"]
    if type(sel) is not dict or not _SELECTION_KEYS <= set(sel) <= (
            _SELECTION_KEYS | _SELECTION_OPTIONAL):
        raise EntryError("dataset entry field 'selection' must be a map of devices, sensors, "
                         "below and optionally since, until")
    _texts(sel["devices"], "selection 'devices'")
    _texts(sel["sensors"], "selection 'sensors'")
    _uint(sel["below"], "selection 'below'")
    for k in ("since", "until"):
        if k in sel:
            _uint(sel[k], f"selection {k!r}")
    if "since" in sel and "until" in sel and sel["since"] >= sel["until"]:
        raise EntryError("selection 'since' must be before 'until'")
    files = f["files"]
    if type(files) is not list or not files:
        raise EntryError("dataset entry field 'files' must be a non-empty list")
    paths = []
    for item in files:
        if type(item) is not dict or set(item) != {"path", "sha256"} or \
                type(item["path"]) is not str or not item["path"]:
            raise EntryError("each dataset file must be {path: text, sha256: 32 bytes}")
        _h32(item["sha256"], "a dataset file's sha256")
        paths.append(item["path"])
    if paths != sorted(set(paths)):
        raise EntryError("dataset files must be sorted by path, without repeats")


def _check_model(f: dict[str, Any]) -> None:
    check_name(f["name"])
    check_version(f["version"])
    _h32(f["digest"], "model entry field 'digest'")
    ds = f["datasets"]
    if type(ds) is not list or not all(type(i) is int and 0 <= i <= _MAX_UINT64 for i in ds):
        raise EntryError("model entry field 'datasets' must be a list of entry indices")
    if ds != sorted(set(ds)):
        raise EntryError("model entry field 'datasets' must be sorted, without repeats")
    if "parent" in f:
        check_version(f["parent"])
    if "owner" in f:
        o = f["owner"]
        if type(o) is not bytes or len(o) != 65 or o[0] != 0x04:
            raise EntryError("model entry field 'owner' must be a 65-byte SEC1 P-256 point")


RECORD_KINDS[DATASET] = RecordKind(
    frozenset({"name", "rows", "root", "selection", "files"}), frozenset(), _check_dataset,
    max_size=16 * 1024)
RECORD_KINDS[MODEL] = RecordKind(
    frozenset({"name", "version", "digest", "datasets"}), frozenset({"parent", "owner"}),
    _check_model, max_size=16 * 1024)
