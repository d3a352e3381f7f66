"""The COSE working group's ES256 examples (../shared/vectors/cose/) against the firmware.

Verified with the firmware's own helpers under MicroPython (firmware/tests/crosscheck.py):
`cose_verify.verify1` for the COSE_Sign1 examples, `p256_verify.verify` for the signer's signature
inside the COSE_Sign example ecdsa-01 (its ToBeSign is given in the file). Used: every example whose
algorithm is ES256. Not used: ecdsa-02/03 and ecdsa-sig-02/03 (P-384, P-521) and ecdsa-04 /
ecdsa-sig-04 (ES512 on P-256: SHA-512), which the firmware does not implement.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import cbor2
import pytest
from mpbatch import batch

SIGN1 = {
    "ecdsa-examples/ecdsa-sig-01.json": True,
    "sign1-tests/sign-pass-01.json": True,  # alg in the unprotected header
    "sign1-tests/sign-pass-02.json": True,  # external AAD
    "sign1-tests/sign-pass-03.json": True,  # untagged
    "sign1-tests/sign-fail-01.json": False,  # wrong CBOR tag
    "sign1-tests/sign-fail-02.json": False,  # changed payload
    "sign1-tests/sign-fail-03.json": False,  # alg changed to -999
    "sign1-tests/sign-fail-04.json": False,  # alg changed to "unknown"
    "sign1-tests/sign-fail-06.json": False,  # protected attribute added
    "sign1-tests/sign-fail-07.json": False,  # protected attribute removed
}


def _b64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _pub(key: dict[str, Any]) -> str:
    assert key["crv"] == "P-256"
    return (b"\x04" + _b64(key["x"]) + _b64(key["y"])).hex()


@pytest.fixture(scope="module")
def cose_dir(vectors: Path) -> Path:
    return vectors / "cose"


def test_sign1_examples(micropython: str, cose_dir: Path) -> None:
    reqs = []
    for name in SIGN1:
        v = json.loads((cose_dir / name).read_text())
        s0 = v["input"]["sign0"]
        assert s0["alg"] == "ES256", name
        reqs.append({"op": "verify1", "pub": _pub(s0["key"]), "msg": v["output"]["cbor"].lower(),
                     "aad": s0.get("external", "")})
    for (name, want), ans in zip(SIGN1.items(), batch(micropython, reqs), strict=True):
        assert ans["ok"] is want, name


def test_cose_sign_example_ecdsa_01(micropython: str, cose_dir: Path) -> None:
    v = json.loads((cose_dir / "ecdsa-examples/ecdsa-01.json").read_text())
    signer = v["input"]["sign"]["signers"][0]
    assert signer["protected"]["alg"] == "ES256"
    tbs = bytes.fromhex(v["intermediates"]["signers"][0]["ToBeSign_hex"])
    msg = cbor2.loads(bytes.fromhex(v["output"]["cbor"]))
    assert msg.tag == 98
    sig = msg.value[3][0][2]  # COSE_Sign: [..., signatures: [[prot, unprot, sig]]]
    digest = hashlib.sha256(tbs).hexdigest()
    bad = bytearray(sig)
    bad[10] ^= 1
    reqs = [{"op": "verify", "pub": _pub(signer["key"]), "digest": digest, "sig": sig.hex()},
            {"op": "verify", "pub": _pub(signer["key"]), "digest": digest, "sig": bad.hex()}]
    assert [a["ok"] for a in batch(micropython, reqs)] == [True, False]
