"""A model's fingerprint: the OpenSSF Model Signing statement (pure: no file access here).

The manifest of a model is its files' relative paths (POSIX, `/`) and SHA-256 digests, in the
order of their path components (what model-signing 1.1's `files` serialization sorts by). The
statement is an in-toto Statement v1:

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": <the model path's last component>, "digest": {"sha256": DIGEST}}],
     "predicateType": "https://model_signing/signature/v1.0",
     "predicate": {"serialization": {"method": "files", "hash_type": "sha256",
                                     "allow_symlinks": false, "ignore_paths": [...]},
                   "resources": [{"name": path, "algorithm": "sha256", "digest": hex}, ...]}}

DIGEST, the manifest digest, is SHA-256 over the per-file digests (32 bytes each) in manifest
order. The paths that model-signing ignores by default (`IGNORE_PATHS`, at the model's top)
are left out here too, so both compute the same digest for the same directory.

The owner's signature is a DSSE envelope (payload type application/vnd.in-toto+json, the
signature ECDSA P-256 / SHA-256 in DER over the DSSE v1 pre-authentication encoding) inside a
Sigstore bundle v0.3 whose verification material is a public-key hint: the SHA-256 (hex) of
the key's SubjectPublicKeyInfo PEM. That is the file `model_signing verify key` accepts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import IntegrityError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
IGNORE_PATHS = (".git", ".gitattributes", ".github", ".gitignore")


@dataclass(frozen=True)
class Manifest:
    """A model's files: (relative path, SHA-256) in manifest order, and the model's name."""

    name: str
    files: tuple[tuple[str, bytes], ...]

    @property
    def digest(self) -> bytes:
        h = hashlib.sha256()
        for _path, d in self.files:
            h.update(d)
        return h.digest()


def path_key(path: str) -> tuple[str, ...]:
    """The manifest's sort key: the path's components."""
    return tuple(path.split("/"))


def make_manifest(name: str, files: Sequence[tuple[str, bytes]]) -> Manifest:
    return Manifest(name, tuple(sorted(files, key=lambda f: path_key(f[0]))))


def statement(m: Manifest) -> dict[str, Any]:
    """The in-toto statement of a manifest (module docstring)."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": m.name, "digest": {"sha256": m.digest.hex()}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {"method": "files", "hash_type": "sha256",
                              "allow_symlinks": False, "ignore_paths": list(IGNORE_PATHS)},
            "resources": [{"name": p, "algorithm": "sha256", "digest": d.hex()}
                          for p, d in m.files],
        },
    }


def statement_bytes(m: Manifest) -> bytes:
    """The statement as the DSSE payload: JSON, keys sorted, no white space, UTF-8."""
    return json.dumps(statement(m), sort_keys=True, separators=(",", ":")).encode()


def manifest_from_statement(st: Any) -> Manifest:
    """The manifest a statement describes. Raises IntegrityError when it is not a model
    statement or its subject digest is not the digest of its resources."""
    try:
        if st["_type"] != STATEMENT_TYPE or st["predicateType"] != PREDICATE_TYPE:
            raise IntegrityError("the statement is not an OpenSSF model signing statement",
                                 "pass the file written by 'iot-anchor model register'")
        (subject,) = st["subject"]
        files = []
        for r in st["predicate"]["resources"]:
            if r["algorithm"] != "sha256":
                raise IntegrityError(f"resource {r['name']!r} is not hashed with sha256",
                                     "register the model again")
            files.append((str(r["name"]), bytes.fromhex(r["digest"])))
        m = Manifest(str(subject["name"]), tuple(files))
        want = bytes.fromhex(subject["digest"]["sha256"])
    except (KeyError, TypeError, ValueError) as e:
        raise IntegrityError(f"the statement is malformed ({type(e).__name__}: {e})",
                             "pass the file written by 'iot-anchor model register'") from None
    if [p for p, _ in m.files] != sorted((p for p, _ in m.files), key=path_key):
        raise IntegrityError("the statement's files are not in manifest order",
                             "register the model again")
    if m.digest != want:
        raise IntegrityError(f"the statement's subject digest {want.hex()} is not the digest "
                             f"of its files ({m.digest.hex()})", "register the model again")
    return m


def pae(payload: bytes, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)


def public_key_hint(key: ec.EllipticCurvePublicKey) -> str:
    pem = key.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def sign_bundle(payload: bytes, key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """The Sigstore bundle (as a JSON object) of a DSSE envelope over `payload`."""
    sig = key.sign(pae(payload), ec.ECDSA(hashes.SHA256()))
    return {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": public_key_hint(key.public_key())},
                                 "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}],
        },
    }


def bundle_payload(bundle: Any) -> bytes:
    """The DSSE payload of a bundle, unverified. Raises IntegrityError if malformed."""
    try:
        env = bundle["dsseEnvelope"]
        if bundle["mediaType"] != BUNDLE_MEDIA_TYPE or env["payloadType"] != PAYLOAD_TYPE:
            raise IntegrityError("the signature is not a Sigstore bundle of an in-toto DSSE "
                                 "envelope", "pass the signature 'model register' wrote")
        return base64.b64decode(env["payload"], validate=True)
    except (KeyError, TypeError, binascii.Error) as e:
        raise IntegrityError(f"the signature bundle is malformed ({type(e).__name__})",
                             "pass the signature 'model register' wrote") from None


def verify_bundle(bundle: Any, key: ec.EllipticCurvePublicKey) -> bytes:
    """Check the bundle's DSSE signature with the owner's key; return the signed payload."""
    payload = bundle_payload(bundle)
    try:
        sigs = bundle["dsseEnvelope"]["signatures"]
        sig = base64.b64decode(sigs[0]["sig"], validate=True)
        hint = bundle["verificationMaterial"]["publicKey"]["hint"]
    except (KeyError, TypeError, IndexError, binascii.Error) as e:
        raise IntegrityError(f"the signature bundle is malformed ({type(e).__name__})",
                             "pass the signature 'model register' wrote") from None
    if hint != public_key_hint(key):
        raise IntegrityError("the signature names another owner key than the one anchored",
                             "the signature was replaced; use the one registered")
    try:
        key.verify(sig, pae(payload), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise IntegrityError("the owner's signature over the statement does not verify",
                             "the statement or its signature was altered") from None
    return payload
