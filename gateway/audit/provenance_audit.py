"""`ledger verify` for the provenance record kinds (gateway.ledger.provenance), registered in
`store_audit.RECORD_AUDITS`:

- dataset entries: the selection names only ledger sizes up to the entry itself, and evaluated
  over the stored readings (gateway/provenance/select.py) it gives the entry's row count and
  dataset root; so a reading of a dataset cannot be changed, dropped or added unseen;
- model entries: each (name, version) once; `parent` is the name's previous version (absent
  for the first); every dataset named is a dataset entry before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.errors import AnchorError
from gateway.ledger.entry import RecordEntry
from gateway.provenance.dataset import Selection
from gateway.provenance.select import dataset_root_of

if TYPE_CHECKING:
    from gateway.audit.store_audit import Auditor


def audit_datasets(auditor: Auditor, entries: list[RecordEntry]) -> None:
    for e in entries:
        sel = Selection.from_fields(e.fields["selection"])
        if sel.below > e.i:
            auditor.problem("entries", e.i, f"dataset selection 'below' {sel.below} is after "
                                            "the entry itself")
            continue
        try:
            n, root = dataset_root_of(auditor.store, sel)
        except AnchorError as err:
            auditor.problem("entries", e.i, f"dataset {e.fields['name']!r}: its rows cannot be "
                                            f"read ({err.what})")
            continue
        if n != e.fields["rows"]:
            auditor.problem("entries", e.i, f"dataset {e.fields['name']!r} says "
                                            f"{e.fields['rows']} rows, its selection gives {n}")
        elif root != e.fields["root"]:
            auditor.problem("entries", e.i, f"dataset {e.fields['name']!r}: the root over its "
                                            f"selection {root.hex()} is not the entry's "
                                            f"{e.fields['root'].hex()}")


def audit_models(auditor: Auditor, entries: list[RecordEntry]) -> None:
    datasets = {e.i for e in auditor.records.get("dataset", [])}
    latest: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    for e in entries:
        name, version = e.fields["name"], e.fields["version"]
        if (name, version) in seen:
            auditor.problem("entries", e.i, f"model {name!r} version {version!r} is registered "
                                            "a second time")
        seen.add((name, version))
        if e.fields.get("parent") != latest.get(name):
            auditor.problem("entries", e.i, f"model {name!r} version {version!r} names parent "
                                            f"{e.fields.get('parent')!r}, the previous version "
                                            f"is {latest.get(name)!r}")
        latest[name] = version
        for d in e.fields["datasets"]:
            if d not in datasets or d >= e.i:
                auditor.problem("entries", e.i, f"model {name!r} version {version!r} names "
                                                f"entry {d}, which is not an earlier dataset "
                                                "entry")
