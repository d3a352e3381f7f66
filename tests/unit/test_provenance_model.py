"""`model register / verify / history / who`: the fingerprint, the refusals, tampering with
the model's files, and model-signing 1.1 as the independent checker of the statement and of
the owner's signature."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.audit.store_audit import audit
from gateway.cli import main
from gateway.storage.store import Store

MODEL_SIGNING = [sys.executable, "-m", "model_signing"]


@pytest.fixture
def rig(tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    data = tmp_path / "data"
    assert main(["init", "--data", str(data)]) == 0
    vkey = capsys.readouterr().out.strip().splitlines()[-1]
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "weights.bin").write_bytes(os.urandom(3000))
    (model / "config.json").write_text('{"layers": 2}')
    (model / "sub" / "vocab.txt").write_text("a\nb\n")
    (model / "a-b").mkdir()  # "a-b/x" sorts after "a/..." by components, before by text
    (model / "a-b" / "x").write_text("x")
    (model / ".gitattributes").write_text("*.bin filter=lfs\n")  # ignored, as model-signing does
    key = ec.generate_private_key(ec.SECP256R1())
    kf = tmp_path / "owner.pem"
    kf.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    pub = tmp_path / "owner.pub"
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    monkeypatch.chdir(tmp_path)  # the default NAME-VER.provenance.json goes here
    return {"data": str(data), "vkey": vkey, "model": model, "key": kf, "pub": pub,
            "tmp": tmp_path}


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(args))
    c = capsys.readouterr()
    return rc, c.out.strip(), c.err.strip()


def _manifest_digest(model: Path) -> str:
    files = sorted((p.relative_to(model).as_posix() for p in model.rglob("*")
                    if p.is_file() and p.name != ".gitattributes"),
                   key=lambda s: s.split("/"))
    h = hashlib.sha256()
    for f in files:
        h.update(hashlib.sha256((model / f).read_bytes()).digest())
    return h.hexdigest()


def test_register_verify_history_who(rig: dict[str, Any],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    d, m = rig["data"], rig["model"]
    rc, out, err = _run(capsys, "model", "register", str(m), "--name", "diag", "--version",
                        "1", "--owner-key", str(rig["key"]), "--json", "--data", d)
    assert rc == 0, err
    r1 = json.loads(out)
    assert r1["digest"] == _manifest_digest(m) and r1["parent"] is None
    prov = Path("diag-1.provenance.json")
    doc = json.loads(prov.read_text())
    assert [r["name"] for r in doc["statement"]["predicate"]["resources"]] == [
        "a-b/x", "config.json", "sub/vocab.txt", "weights.bin"]
    rc, out, _ = _run(capsys, "model", "verify", str(m), "--provenance", str(prov),
                      "--gateway-key", rig["vkey"])
    assert rc == 0 and out.startswith("OK: diag 1 (4 files") and "owner signature checked" in out
    (m / "weights.bin").write_bytes(os.urandom(3000))  # a refit
    rc, out, err = _run(capsys, "model", "register", str(m), "--name", "diag", "--version",
                        "2", "--out", "v2.json", "--data", d)
    assert rc == 0, err
    assert "parent 1" in out
    rc, out, _ = _run(capsys, "model", "history", "diag", "--json", "--data", d)
    hist = json.loads(out)
    assert [(h["version"], h["parent"]) for h in hist] == [("1", None), ("2", "1")]
    assert {"version", "digest", "parent", "datasets", "entry", "time"} <= set(hist[0])
    assert hist[0]["owner"] is not None and hist[1]["owner"] is None
    rc, out, _ = _run(capsys, "model", "history", "diag", "--data", d)
    assert rc == 0 and "parent 1;" in out
    # who: the earliest registration of a fingerprint wins
    rc, out, _ = _run(capsys, "model", "register", str(m), "--name", "copycat", "--version",
                      "1", "--data", d)
    assert rc == 0
    rc, out, _ = _run(capsys, "model", "who", str(m), "--json", "--data", d)
    who = json.loads(out)
    assert (who["name"], who["version"], who["entry"]) == ("diag", "2", hist[1]["entry"])
    assert [x["name"] for x in who["later"]] == ["copycat"]
    rc, out, _ = _run(capsys, "model", "who", r1["digest"], "--data", d)
    assert rc == 0 and out.startswith("diag 1 first registered")
    rc, out, _ = _run(capsys, "model", "who", "00" * 32, "--data", d)
    assert rc == 1 and out.startswith("not registered")
    with Store.open(d) as store:
        assert audit(store, rig["vkey"], workers=1).ok


@pytest.mark.parametrize("change,named", [
    ("changed", "weights.bin: differs"),
    ("added", "sub/new.txt: extra"),
    ("removed", "config.json: missing"),
])
def test_a_changed_added_or_removed_file_is_named(rig: dict[str, Any],
                                                  capsys: pytest.CaptureFixture[str],
                                                  change: str, named: str) -> None:
    m = rig["model"]
    assert _run(capsys, "model", "register", str(m), "--name", "diag", "--version", "1",
                "--data", rig["data"])[0] == 0
    if change == "changed":
        (m / "weights.bin").write_bytes(b"0" * 3000)
    elif change == "added":
        (m / "sub" / "new.txt").write_text("n")
    else:
        (m / "config.json").unlink()
    rc, out, _ = _run(capsys, "model", "verify", str(m), "--provenance",
                      "diag-1.provenance.json", "--gateway-key", rig["vkey"])
    assert rc == 1 and out.startswith(f"FAIL: {m}/{named}"), out


def test_a_tampered_provenance_file_fails(rig: dict[str, Any],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    m = rig["model"]
    assert _run(capsys, "model", "register", str(m), "--name", "diag", "--version", "1",
                "--owner-key", str(rig["key"]), "--data", rig["data"])[0] == 0
    prov = Path("diag-1.provenance.json")
    doc = json.loads(prov.read_text())
    (m / "weights.bin").write_bytes(b"evil")
    res = doc["statement"]["predicate"]["resources"]
    res[-1]["digest"] = hashlib.sha256(b"evil").hexdigest()
    prov.write_text(json.dumps(doc))
    rc, out, _ = _run(capsys, "model", "verify", str(m), "--provenance", str(prov),
                      "--gateway-key", rig["vkey"])
    assert rc == 1 and "subject digest" in out, out
    other = rig["tmp"] / "o"
    assert main(["init", "--data", str(other)]) == 0
    other_vkey = capsys.readouterr().out.strip().splitlines()[-1]
    rc, out, _ = _run(capsys, "model", "verify", str(m), "--provenance", str(prov),
                      "--gateway-key", other_vkey)
    assert rc == 1 and "FAIL: checkpoint" in out, out


def test_refusals(rig: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    d, m = rig["data"], rig["model"]
    assert _run(capsys, "model", "register", str(m), "--name", "diag", "--version", "1",
                "--data", d)[0] == 0
    cases = [
        (["model", "register", str(m), "--name", "diag", "--version", "1"],
         "version '1' is already registered"),
        (["model", "register", str(m), "--name", "diag", "--version", "2", "--dataset", "0"],
         "entry 0 of this ledger is not a dataset entry"),
        (["model", "register", str(m), "--name", "diag", "--version", "2", "--dataset",
          str(rig["tmp"])], "neither an entry index nor an exported dataset directory"),
        (["model", "register", "no/such/model", "--name", "diag", "--version", "2"],
         "does not exist"),
        (["model", "register", str(m), "--name", "diag", "--version", "2", "--owner-key",
          str(m / "config.json")], "is not an unencrypted PEM private key"),
        (["model", "history", "nothing"], "no model named 'nothing'"),
        (["model", "who", "nonsense"], "neither a model path nor a 64-hex digest"),
    ]
    for args, msg in cases:
        rc, _out, err = _run(capsys, *args, "--data", d)
        assert rc == 2 and msg in err, (args, err)
    (m / "link").symlink_to(m / "config.json")
    rc, _out, err = _run(capsys, "model", "register", str(m), "--name", "diag", "--version",
                         "2", "--data", d)
    assert rc == 2 and "is a symlink" in err
    (m / "link").unlink()
    if os.geteuid() != 0:  # root reads everything
        (m / "config.json").chmod(0)
        rc, _out, err = _run(capsys, "model", "register", str(m), "--name", "diag",
                             "--version", "2", "--data", d)
        assert rc == 2 and "Permission denied" in err
        (m / "config.json").chmod(0o644)
    unreadable = m / "fifo"
    os.mkfifo(unreadable)
    rc, _out, err = _run(capsys, "model", "register", str(m), "--name", "diag", "--version",
                         "2", "--data", d)
    assert rc == 2 and "is not a regular file" in err
    with Store.open(d) as store:
        assert len(store.records("model")) == 1  # nothing refused was anchored


def test_model_signing_computes_the_same_digest_and_verifies_the_owner(
        rig: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("model_signing")
    m = rig["model"]
    rc, out, _ = _run(capsys, "model", "register", str(m), "--name", "diag", "--version", "1",
                      "--owner-key", str(rig["key"]), "--json", "--data", rig["data"])
    assert rc == 0
    ours = json.loads(out)
    # model-signing's own statement for the same directory and key
    theirs = rig["tmp"] / "theirs.sig"
    p = subprocess.run([*MODEL_SIGNING, "sign", "key", str(m), "--private_key", str(rig["key"]),
                        "--signature", str(theirs)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    import base64
    payload = json.loads(base64.b64decode(json.loads(theirs.read_text())["dsseEnvelope"]
                                          ["payload"]))
    assert payload["subject"][0]["digest"]["sha256"] == ours["digest"]
    doc = json.loads(Path("diag-1.provenance.json").read_text())
    assert payload["predicate"]["resources"] == [
        {"name": r["name"], "digest": r["digest"], "algorithm": r["algorithm"]}
        for r in doc["statement"]["predicate"]["resources"]]
    # and it accepts the signature file we wrote
    p = subprocess.run([*MODEL_SIGNING, "verify", "key", str(m), "--signature",
                        ours["signature"], "--public_key", str(rig["pub"])],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "Verification succeeded" in p.stdout + p.stderr, p.stderr
    (m / "config.json").write_text("{}")
    p = subprocess.run([*MODEL_SIGNING, "verify", "key", str(m), "--signature",
                        ours["signature"], "--public_key", str(rig["pub"])],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
