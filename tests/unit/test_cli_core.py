"""The command-line contracts of the gateway core, through `.venv/bin/iot-anchor`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.ledger.note import parse_vkey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers_readings import Device  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXE = ROOT / ".venv" / "bin" / "iot-anchor"


def cli(*args: str, data: Path | None = None, stdin: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [str(EXE), *args]
    if data is not None:
        cmd += ["--data", str(data)]
    e = dict(os.environ)
    e.pop("IOT_ANCHOR_DATA", None)
    e.update(env or {})
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120, env=e)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    r = cli("init", data=d)
    assert r.returncode == 0, r.stderr
    return d


def test_init_prints_vkey_last_and_refuses_overwrite(tmp_path: Path) -> None:
    d = tmp_path / "gw"
    r = cli("init", data=d)
    assert r.returncode == 0
    last = r.stdout.strip().splitlines()[-1]
    name, _, _ = parse_vkey(last)
    assert name.startswith("iot-anchor/")
    assert (d / "gateway.vkey").read_text().strip() == last
    assert stat.S_IMODE((d / "gateway.key").stat().st_mode) == 0o600
    db = d / "ledger.db"
    assert db.is_file()
    import sqlite3
    c = sqlite3.connect(db)
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("PRAGMA user_version").fetchone()[0] >= 1
    c.close()
    again = cli("init", data=d)
    assert again.returncode != 0 and "already exists" in again.stderr


def test_data_defaults_to_env(tmp_path: Path) -> None:
    d = tmp_path / "envdata"
    r = cli("init", env={"IOT_ANCHOR_DATA": str(d)})
    assert r.returncode == 0 and (d / "ledger.db").exists()
    r = subprocess.run([str(EXE), "ledger", "status", "--json"], cwd=tmp_path,
                       capture_output=True, text=True, env={**os.environ, "IOT_ANCHOR_DATA": ""})
    # with no env value the default ./anchor-data does not exist: a clear error, not a trace
    assert r.returncode == 2 and "init" in r.stderr and "Traceback" not in r.stderr


def test_device_add_list_revoke_rotate(data: Path, tmp_path: Path) -> None:
    a, b = Device("alpha"), Device("beta")
    assert cli("device", "add", "alpha", "--public-key", a.public_hex, data=data).returncode == 0
    pem = tmp_path / "beta.pem"
    pem.write_bytes(b.public_pem())
    r = cli("device", "add", "beta", "--public-key", str(pem), data=data)
    assert r.returncode == 0 and "ledger entry 1" in r.stdout
    dup = cli("device", "add", "beta", "--public-key", a.public_hex, data=data)
    assert dup.returncode == 2 and "already registered" in dup.stderr
    bad = cli("device", "add", "gamma", "--public-key", "04" + "00" * 64, data=data)
    assert bad.returncode == 2 and "P-256" in bad.stderr
    bad_id = cli("device", "add", "a/b", "--public-key", a.public_hex, data=data)
    assert bad_id.returncode == 2 and "invalid device id" in bad_id.stderr
    r = cli("device", "list", "--json", data=data)
    rows = json.loads(r.stdout)
    assert [(x["id"], x["status"], x["key"]) for x in rows] == [
        ("alpha", "active", a.public_hex), ("beta", "active", b.public_hex)]
    assert cli("device", "revoke", "beta", data=data).returncode == 0
    c = Device("alpha")
    assert cli("device", "rotate", "alpha", "--public-key", c.public_hex, data=data).returncode == 0
    rows = {x["id"]: x for x in json.loads(cli("device", "list", "--json", data=data).stdout)}
    assert rows["beta"]["status"] == "revoked" and rows["alpha"]["key"] == c.public_hex
    text = cli("device", "list", data=data).stdout
    assert "alpha" in text and "revoked" in text
    st = json.loads(cli("ledger", "status", "--json", data=data).stdout)
    assert st["entries"] == 4  # add, add, revoke, rotate: each a ledger entry
    assert cli("ledger", "verify", data=data).returncode == 0


def test_ingest_status_receipt_verify(data: Path, tmp_path: Path) -> None:
    a, b = Device("alpha"), Device("beta")
    for d in (a, b):
        cli("device", "add", d.id, "--public-key", d.public_hex, data=data)
    ma = a.readings(60)
    mb = b.readings(40)
    lines = [m.hex() for m in ma[:50]] + [m.hex() for m in mb] + ["", "# comment", "nothex"]
    lines += [ma[3].hex()]  # a duplicate
    f = tmp_path / "in.hex"
    f.write_text("\n".join(lines) + "\n")
    r = cli("ingest", str(f), data=data)
    assert r.returncode == 0, r.stderr
    assert "accepted 90, duplicate 1, rejected 1" in r.stdout and "not_hex: 1" in r.stdout
    # the rest via stdin, with a gap (seq 55 missing)
    rest = [m.hex() for i, m in enumerate(ma[50:], 50) if i != 55]
    r = cli("ingest", "-", "--json", data=data, stdin="\n".join(rest))
    summary = json.loads(r.stdout)
    assert summary["accepted"] == 9 and summary["rejected"] == {}
    st = json.loads(cli("ledger", "status", "--json", data=data).stdout)
    assert st["readings"] == 99
    assert st["devices"]["alpha"] == {**st["devices"]["alpha"], "readings": 59, "last_seq": 59,
                                      "gaps": [[55, 55]]}
    assert st["devices"]["beta"]["gaps"] == [] and st["devices"]["beta"]["last_seq"] == 39
    assert st["entries"] == 4 and st["checkpoint"].startswith("iot-anchor/")
    assert isinstance(st["rejected"], dict)
    text = cli("ledger", "status", data=data).stdout
    assert "alpha" in text and "55-55" in text
    v = cli("ledger", "verify", data=data)
    assert v.returncode == 0 and "ledger OK" in v.stdout and "99 readings" in v.stdout
    # receipt + offline verification
    rec = cli("receipt", "alpha", "7", data=data)
    assert rec.returncode == 0
    receipt = json.loads(rec.stdout)
    assert receipt["device"] == "alpha" and receipt["seq"] == 7
    rf = tmp_path / "r.json"
    rf.write_text(rec.stdout)
    vkey = (data / "gateway.vkey").read_text().strip()
    ok = cli("verify-receipt", str(rf), "--gateway-key", vkey, "--device-key", a.public_hex)
    assert ok.returncode == 0 and ok.stdout.startswith("OK:") and len(ok.stdout.splitlines()) == 1
    wrong = cli("verify-receipt", str(rf), "--gateway-key", vkey, "--device-key", b.public_hex)
    assert wrong.returncode == 1 and wrong.stdout.startswith("FAIL:")
    receipt["reading"]["cose"] = receipt["reading"]["cose"][:-2] + "00"
    rf.write_text(json.dumps(receipt))
    bad = cli("verify-receipt", str(rf), "--gateway-key", vkey)
    assert bad.returncode == 1 and len(bad.stdout.strip().splitlines()) == 1
    missing = cli("receipt", "alpha", "55", data=data)
    assert missing.returncode == 2 and "not anchored" in missing.stderr


def test_ingest_binary_records(data: Path, tmp_path: Path) -> None:
    a = Device("alpha")
    cli("device", "add", "alpha", "--public-key", a.public_hex, data=data)
    msgs = a.readings(20)
    blob = b"".join(len(m).to_bytes(4, "big") + m for m in msgs) + b"\x00\x00\x00\x50abc"
    f = tmp_path / "in.bin"
    f.write_bytes(blob)
    r = cli("ingest", str(f), "--binary", "--json", data=data)
    s = json.loads(r.stdout)
    assert r.returncode == 0 and s["accepted"] == 20 and s["rejected"] == {"truncated_record": 1}
    f.write_bytes(b"\x7f\xff\xff\xff" + b"x" * 10)
    r = cli("ingest", str(f), "--binary", data=data)
    assert r.returncode == 2 and "not length-prefixed" in r.stderr


def test_ingest_unreadable_input_fails(data: Path, tmp_path: Path) -> None:
    r = cli("ingest", str(tmp_path / "nope.hex"), data=data)
    assert r.returncode != 0 and "cannot read" in r.stderr


def test_ledger_verify_names_a_tampered_item(data: Path, tmp_path: Path) -> None:
    a = Device("alpha")
    cli("device", "add", "alpha", "--public-key", a.public_hex, data=data)
    f = tmp_path / "in.hex"
    f.write_text("\n".join(m.hex() for m in a.readings(30)))
    cli("ingest", str(f), data=data)
    import sqlite3
    c = sqlite3.connect(data / "ledger.db")
    (cose,) = c.execute("SELECT cose FROM readings WHERE id = 12").fetchone()
    c.execute("UPDATE readings SET cose = ? WHERE id = 12", (cose[:-1] + b"\x00",))
    c.commit()
    c.close()
    r = cli("ledger", "verify", data=data)
    assert r.returncode == 1 and "readings 12:" in r.stdout.splitlines()[0]
