"""`iot-anchor model register / verify / history / who`: a model's fingerprint anchored as a
ledger entry of kind `model` (gateway.ledger.provenance), its receipt, and the audit trail.

The provenance file (NAME-VER.provenance.json, or --out) is a JSON object::

    {"format": 1, "name": NAME, "version": VER,
     "statement": the in-toto statement of the model's manifest (gateway/provenance/statement.py),
     "signature": the owner's Sigstore bundle over it, or null,
     "receipt": the receipt of the model entry (gateway/ledger/receipt.py, an entry receipt:
                the entry, its inclusion proof, the signed checkpoint)}

With --owner-key the bundle is also written on its own, beside the provenance file with the
suffix .sig (`model_signing verify key PATH --signature FILE --public_key PUB` checks it).
The files the command writes or reads (the provenance file and its .sig) are left out of the
manifest when they lie inside PATH.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import AnchorError, ConfigError, IntegrityError
from gateway.ledger.entry import RecordEntry, decode_entry
from gateway.ledger.provenance import DATASET, MODEL, check_name, check_version
from gateway.ledger.receipt import build_entry_receipt, verify_entry_receipt
from gateway.provenance import statement as st
from gateway.provenance.dataset import LEDGER_FILE
from gateway.provenance.files import file_error, sha256_file, write_atomic
from gateway.storage.store import Store
from gateway.wire.es256 import load_public_key, point_bytes

FORMAT = 1


def sig_path(provenance: Path) -> Path:
    return provenance.with_suffix(".sig")


def manifest_of(path: Path, skip: set[Path] | None = None) -> st.Manifest:
    """The manifest of a file or a directory (every regular file below it but model-signing's
    ignored git paths and `skip`). Refuses symlinks and what is not a file or directory."""
    if path.is_symlink():
        raise ConfigError(f"{path} is a symlink", "give the model file or directory itself")
    if not path.exists():
        raise ConfigError(f"{path} does not exist", "give the model's file or directory")
    if path.is_file():
        return st.Manifest(path.name, ((".", sha256_file(path)),))
    if not path.is_dir():
        raise ConfigError(f"{path} is not a file or a directory", "give the model's files")
    skipped = {p.resolve() for p in skip or ()}
    files: list[tuple[str, bytes]] = []

    def walk(d: Path) -> None:
        try:
            children = sorted(d.iterdir())
        except OSError as e:
            raise file_error(e, d, "listing") from e
        for c in children:
            rel = c.relative_to(path).as_posix()
            if d == path and c.name in st.IGNORE_PATHS:
                continue
            if c.is_symlink():
                raise ConfigError(f"{c} is a symlink: a model's manifest holds regular files "
                                  "only", "replace the link by the file, or move it out")
            if c.is_dir():
                walk(c)
            elif c.is_file():
                if c.resolve() not in skipped:
                    files.append((rel, sha256_file(c)))
            else:
                raise ConfigError(f"{c} is not a regular file", "move it out of the model")

    walk(path)
    if not files:
        raise ConfigError(f"{path} holds no file", "give the model's file or directory")
    return st.make_manifest(path.resolve().name, files)


def iso_ms(t: int) -> str:
    return datetime.fromtimestamp(t / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{t % 1000:03d}Z"


def _dataset_entry(store: Store, ref: str) -> int:
    """The ledger index of a dataset given as an exported directory or an entry index."""
    if ref.isdigit():
        i = int(ref)
        body = store.entry_body(i)
        if body is None or decode_entry(body).kind != DATASET:
            raise ConfigError(f"--dataset {ref}: entry {i} of this ledger is not a dataset "
                              "entry", "give the index 'dataset export' printed, or its OUT")
        return i
    path = Path(ref)
    try:
        led = json.loads((path / LEDGER_FILE).read_bytes())
        i = int(led["dataset"])
        body = bytes.fromhex(next(e["cbor"] for e in led["entries"] if e["index"] == i))
    except FileNotFoundError:
        raise ConfigError(f"--dataset {ref}: neither an entry index nor an exported dataset "
                          f"directory (no {LEDGER_FILE})", "give OUT or the entry") from None
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as e:
        raise ConfigError(f"--dataset {ref}: {LEDGER_FILE} cannot be read ({e})",
                          "give an intact dataset directory or the entry index") from None
    if store.entry_body(i) != body:
        raise ConfigError(f"--dataset {ref}: its dataset entry {i} is not in this ledger",
                          "register the model on the gateway that exported the dataset")
    return i


def _owner(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
    except OSError as e:
        raise file_error(e, path, "reading the owner key") from e
    except (ValueError, TypeError) as e:
        raise ConfigError(f"--owner-key {path} is not an unencrypted PEM private key ({e})",
                          "e.g. 'openssl ecparam -name prime256v1 -genkey -noout -out k.pem'"
                          ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError(f"--owner-key {path} is not a P-256 key",
                          "give a P-256 (prime256v1) private key in PEM")
    return key


@dataclass
class Registered:
    entry: int
    digest: bytes
    parent: str | None
    provenance: Path
    signature: Path | None


def register(store: Store, path: Path, name: str, version: str, datasets: list[str],
             owner_key: Path | None, out: Path | None) -> Registered:
    check_name(name)
    check_version(version)
    out = out or Path(f"{name}-{version}.provenance.json")
    sig = sig_path(out)
    manifest = manifest_of(path, {out, sig})
    versions = [e for e in store.records(MODEL) if e.fields["name"] == name]
    if any(e.fields["version"] == version for e in versions):
        raise ConfigError(f"model {name!r} version {version!r} is already registered",
                          f"see 'iot-anchor model history {name}'; give a new --version")
    ds = sorted({_dataset_entry(store, r) for r in datasets})
    payload = st.statement_bytes(manifest)
    fields: dict[str, Any] = {"name": name, "version": version, "digest": manifest.digest,
                              "datasets": ds}
    parent = versions[-1].fields["version"] if versions else None
    if parent is not None:
        fields["parent"] = parent
    bundle = None
    if owner_key is not None:
        key = _owner(owner_key)
        bundle = st.sign_bundle(payload, key)
        fields["owner"] = point_bytes(key.public_key())
    for f in (out, sig):  # refuse an unwritable place before anything is anchored
        try:
            with open(f.with_name(f.name + ".tmp"), "wb"):
                pass
        except OSError as e:
            raise file_error(e, f, "writing") from e
    entry, _cp = store.append_record(store.load_signer(), MODEL, fields)
    parts = store.entry_receipt_parts(entry)
    assert parts is not None
    doc = {"format": FORMAT, "name": name, "version": version,
           "statement": json.loads(payload), "signature": bundle,
           "receipt": build_entry_receipt(**parts)}
    if bundle is not None:
        write_atomic(sig, (json.dumps(bundle) + "\n").encode())
    else:
        os.unlink(sig.with_name(sig.name + ".tmp"))
    write_atomic(out, (json.dumps(doc, indent=1) + "\n").encode())
    return Registered(entry, manifest.digest, parent, out, sig if bundle else None)


@dataclass
class VerifiedModel:
    name: str
    version: str
    entry: int
    digest: bytes
    files: int
    owner_checked: bool
    tree_size: int


def verify_model(path: Path, provenance: Path, vkey: str) -> VerifiedModel:
    """Check a model against its provenance file offline; raises IntegrityError (or another
    AnchorError) naming the first file that differs, is missing or is extra."""
    try:
        doc = json.loads(provenance.read_bytes())
    except OSError as err:
        raise file_error(err, provenance, "reading") from err
    except ValueError as err:
        raise IntegrityError(f"{provenance} is not JSON ({err})",
                             "pass the file 'model register' wrote") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise IntegrityError(f"{provenance} is not a version-{FORMAT} model provenance file",
                             "pass the file 'model register' wrote")
    got = verify_entry_receipt(doc.get("receipt") or {}, vkey)
    e = got.entry
    if not isinstance(e, RecordEntry) or e.kind != MODEL:
        raise IntegrityError(f"{provenance}: the receipt is of a {e.kind} entry, not a model",
                             "pass the file 'model register' wrote")
    if (doc.get("name"), doc.get("version")) != (e.fields["name"], e.fields["version"]):
        raise IntegrityError(f"{provenance} says {doc.get('name')!r} {doc.get('version')!r}, "
                             f"its entry {e.i} {e.fields['name']!r} {e.fields['version']!r}",
                             "the provenance file was altered")
    anchored = st.manifest_from_statement(doc.get("statement"))
    if anchored.digest != e.fields["digest"]:
        raise IntegrityError(f"{provenance}: the statement's digest {anchored.digest.hex()} is "
                             f"not the one anchored in entry {e.i} "
                             f"({e.fields['digest'].hex()})", "the provenance file was altered")
    owner = "owner" in e.fields
    if owner:
        if doc.get("signature") is None:
            raise IntegrityError(f"{provenance}: entry {e.i} records an owner key but the file "
                                 "has no signature", "the provenance file was altered")
        payload = st.verify_bundle(doc["signature"], load_public_key(e.fields["owner"]))
        if json.loads(payload) != doc.get("statement"):
            raise IntegrityError(f"{provenance}: the owner signed another statement",
                                 "the provenance file was altered")
    here = manifest_of(path, {provenance, sig_path(provenance)})
    _compare(anchored, here, path)
    return VerifiedModel(e.fields["name"], e.fields["version"], e.i, anchored.digest,
                         len(anchored.files), owner, got.tree_size)


def _compare(anchored: st.Manifest, here: st.Manifest, path: Path) -> None:
    want = dict(anchored.files)
    have = dict(here.files)
    for p in sorted(set(want) | set(have), key=st.path_key):
        shown = path if p == "." else path / p
        if p not in have:
            raise IntegrityError(f"{shown}: missing (the registered model has it)",
                                 "restore the file")
        if p not in want:
            raise IntegrityError(f"{shown}: extra (not in the registered model)",
                                 "remove it, or register a new version")
        if have[p] != want[p]:
            raise IntegrityError(f"{shown}: differs (sha256 {have[p].hex()}, registered "
                                 f"{want[p].hex()})", "restore the registered file")


def _dataset_info(store: Store, i: int) -> dict[str, Any]:
    body = store.entry_body(i)
    e = decode_entry(body) if body is not None else None
    if not isinstance(e, RecordEntry) or e.kind != DATASET:
        return {"entry": i, "name": None, "rows": None}
    return {"entry": i, "name": e.fields["name"], "rows": e.fields["rows"]}


def _describe(store: Store, e: RecordEntry) -> dict[str, Any]:
    f = e.fields
    return {"name": f["name"], "version": f["version"], "digest": f["digest"].hex(),
            "parent": f.get("parent"), "datasets": [_dataset_info(store, i)
                                                    for i in f["datasets"]],
            "owner": f["owner"].hex() if "owner" in f else None, "entry": e.i,
            "time": iso_ms(e.t)}


def history(store: Store, name: str) -> list[dict[str, Any]]:
    check_name(name)
    out = [_describe(store, e) for e in store.records(MODEL) if e.fields["name"] == name]
    if not out:
        raise ConfigError(f"no model named {name!r} is registered",
                          "register one with 'iot-anchor model register PATH --name NAME "
                          "--version VER'")
    return out


def parse_digest(ref: str) -> bytes | None:
    if len(ref) == 64:
        try:
            return bytes.fromhex(ref)
        except ValueError:
            return None
    return None


def who(store: Store, ref: str) -> dict[str, Any] | None:
    """The first registration of a fingerprint (a model path or a 64-hex digest), with the
    later ones; None when it was never registered."""
    digest = parse_digest(ref)
    if digest is None or Path(ref).exists():
        try:
            digest = manifest_of(Path(ref)).digest
        except AnchorError as e:
            if digest is None:
                raise ConfigError(f"{ref!r} is neither a model path nor a 64-hex digest "
                                  f"({e.what})", "give the model's path or its digest") from None
    regs = [_describe(store, e) for e in store.records(MODEL) if e.fields["digest"] == digest]
    if not regs:
        return None
    first = dict(regs[0])
    first["later"] = [{k: r[k] for k in ("name", "version", "entry", "time")} for r in regs[1:]]
    return first
