"""Wycheproof ECDSA P-256/SHA-256 (raw r||s, the COSE ES256 form) against our verifier.

Policy: every `valid` case is accepted except those whose s is above n/2 (high-S): the gateway
refuses those on purpose (`high_s`; the firmware emits low-S only, so a high-S signature is the
malleated twin of a real one). Every `invalid` case is rejected. The test lists the high-S
valid cases it expects to be refused, by tcId, and checks that list is exactly what the data
gives, so a change in either shows up.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.wire.cose import HALF_N
from gateway.wire.es256 import check_signature, load_public_key

FILE = "wycheproof/ecdsa_secp256r1_sha256_p1363_test.json"

# `valid` cases whose s > n/2, refused by the low-S policy (reason high_s). Each one's low-S
# twin (r, n - s) is accepted, which shows the refusal is the policy and nothing else.
HIGH_S_VALID = [
    64, 66, 67, 68, 71, 77, 78, 80, 81, 85, 86, 87, 94, 95, 96, 100, 102, 104, 105, 107, 110,
    111, 114, 115, 117, 118, 138, 139, 140, 141, 142, 171, 172, 175, 176, 177, 180, 183, 189,
    190, 191, 192, 195, 196, 197, 199, 200, 204, 210, 211, 216, 217, 226, 227, 229, 233, 234,
    237, 240, 242, 243, 244, 246, 248, 249, 250, 252, 253, 257, 262,
]


def _cases(vectors: Path) -> list[tuple[dict, dict]]:
    data = json.loads((vectors / FILE).read_text())
    assert data["algorithm"] == "ECDSA"
    return [(g, t) for g in data["testGroups"] for t in g["tests"]]


def _high_s(sig_hex: str) -> bool:
    sig = bytes.fromhex(sig_hex)
    return len(sig) == 64 and int.from_bytes(sig[32:], "big") > HALF_N


def test_every_case(vectors: Path) -> None:
    cases = _cases(vectors)
    assert len(cases) > 200
    refused_by_policy = []
    counts = {"valid": 0, "invalid": 0}
    for group, t in cases:
        assert group["sha"] == "SHA-256"
        key = load_public_key(bytes.fromhex(group["publicKey"]["uncompressed"]))
        reason = check_signature(key, bytes.fromhex(t["msg"]), bytes.fromhex(t["sig"]))
        counts[t["result"]] += 1
        if t["result"] == "valid":
            if _high_s(t["sig"]):
                assert reason == "high_s", t["tcId"]
                refused_by_policy.append(t["tcId"])
            else:
                assert reason is None, (t["tcId"], t["comment"], reason)
        elif t["result"] == "invalid":
            assert reason is not None, (t["tcId"], t["comment"])
        else:
            pytest.fail(f"unexpected result {t['result']!r} in tcId {t['tcId']}")
    assert counts["valid"] >= 150 and counts["invalid"] >= 80
    assert refused_by_policy == HIGH_S_VALID


def test_low_s_twin_of_each_policy_refusal_is_accepted(vectors: Path) -> None:
    n = 2 * HALF_N + 1
    by_id = {t["tcId"]: (g, t) for g, t in _cases(vectors)}
    for tc in HIGH_S_VALID:
        group, t = by_id[tc]
        key = load_public_key(bytes.fromhex(group["publicKey"]["uncompressed"]))
        sig = bytes.fromhex(t["sig"])
        twin = sig[:32] + (n - int.from_bytes(sig[32:], "big")).to_bytes(32, "big")
        assert check_signature(key, bytes.fromhex(t["msg"]), twin) is None, tc


def test_high_s_twin_of_each_accepted_case_is_refused(vectors: Path) -> None:
    n = 2 * HALF_N + 1
    for group, t in _cases(vectors):
        if t["result"] != "valid" or _high_s(t["sig"]):
            continue
        key = load_public_key(bytes.fromhex(group["publicKey"]["uncompressed"]))
        sig = bytes.fromhex(t["sig"])
        s = int.from_bytes(sig[32:], "big")
        twin = sig[:32] + (n - s).to_bytes(32, "big")
        assert check_signature(key, bytes.fromhex(t["msg"]), twin) == "high_s", t["tcId"]
