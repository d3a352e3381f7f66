"""`dataset export` and `dataset verify`: the files, the anchoring, every tampering case of
issue 14 (each must fail naming the item), bad input, and the audit of dataset entries.
The interop checks (pyarrow, pandas, mlcroissant) are in test_provenance_interop.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from helpers_provenance import (
    DATA,
    anchored_ledger,
    edit_messages,
    edit_rows,
    fix_digest,
    read_messages,
)

from gateway.audit.store_audit import audit
from gateway.cli import main
from gateway.ledger import merkle, note
from gateway.ledger.entry import RecordEntry, decode_entry
from gateway.storage.store import Store


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("prov")
    data = base / "data"
    vkey, devs, msgs = anchored_ledger(data)
    out = base / "out"
    rc = main(["dataset", "export", str(out), "--name", "ward-7", "--json", "--data",
               str(data)])
    assert rc == 0
    return {"base": base, "data": data, "vkey": vkey, "devs": devs, "msgs": msgs, "out": out}


def _verify(out: Path, vkey: str, capsys: pytest.CaptureFixture[str], *extra: str
            ) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["dataset", "verify", str(out), "--gateway-key", vkey, *extra])
    return rc, capsys.readouterr().out.strip()


def _copy(exported: dict[str, Any], tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(exported["out"], dst)
    return dst


def test_export_writes_the_contract_and_anchors_it(exported: dict[str, Any],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out, msgs = exported["out"], exported["msgs"]
    table = pq.read_table(out / DATA)
    assert table.schema.names == ["device", "seq", "ts", "hr", "spo2", "temp", "leaf", "entry"]
    assert [str(t) for t in table.schema.types] == [
        "string", "int64", "timestamp[ms, tz=UTC]", "double", "double", "double",
        "fixed_size_binary[32]", "int64"]
    rows = table.to_pylist()
    want = [(d, s) for d in sorted(msgs) for s in range(len(msgs[d]))]
    assert [(r["device"], r["seq"]) for r in rows] == want
    ordered = [m for d in sorted(msgs) for m in msgs[d]]
    assert [r["leaf"] for r in rows] == [merkle.leaf_hash(m) for m in ordered]
    assert rows[4]["ts"] is None and rows[0]["ts"].timestamp() == 1_735_689_600
    assert rows[1]["spo2"] is None and rows[0]["spo2"] == 95.0
    assert read_messages(out) == ordered
    with Store.open(exported["data"]) as store:
        (ds,) = store.records("dataset")
        assert ds.fields["rows"] == len(rows)
        assert ds.fields["root"] == merkle.root([merkle.leaf_hash(m) for m in ordered])
        assert ds.fields["files"][0]["path"] == DATA
        assert ds.fields["selection"] == {"devices": [], "sensors": [],
                                          "below": ds.i}
        for r in rows:  # each row's entry is the batch that anchored it
            assert store.receipt_parts(r["device"], r["seq"])["entry_index"] == r["entry"]
        assert audit(store, exported["vkey"], workers=1).ok
    meta = json.loads((out / "croissant.json").read_text())
    assert meta["conformsTo"] == "http://mlcommons.org/croissant/1.1"
    assert meta["prov:wasGeneratedBy"]["iot:entry"] == ds.i
    assert meta["prov:wasGeneratedBy"]["iot:root"] == ds.fields["root"].hex()
    assert meta["prov:wasDerivedFrom"][0]["iot:gatewayKey"] == exported["vkey"]
    assert meta["rai:dataCollectionTimeframe"] == ["2025-01-01T00:00:00Z",
                                                    "2025-01-01T00:38:00Z"]
    rc, line = _verify(out, exported["vkey"], capsys)
    assert rc == 0 and line.startswith(f"OK: dataset 'ward-7', {len(rows)} rows"), line


def test_export_json_and_a_selection(exported: dict[str, Any], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sel"
    capsys.readouterr()
    assert main(["dataset", "export", str(out), "--name", "spo2-ward-1", "--device", "ward-1",
                 "--since", "2025-01-01T00:05:00Z", "--until", "1735691400", "--sensor",
                 "spo2", "--json", "--data", str(exported["data"])]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"name", "rows", "entry", "root", "files"}
    assert res["files"] == ["croissant.json", "data/readings.parquet",
                            "provenance/batches.cbor", "provenance/ledger.json",
                            "provenance/readings.bin"]
    rows = pq.read_table(out / DATA).to_pylist()
    # ward-1, 00:05 <= ts < 00:30, with spo2: k in 5..29, k % 3 == 0, k % 5 != 4
    assert [r["seq"] for r in rows] == [k for k in range(5, 30) if k % 3 == 0 and k % 5 != 4]
    assert res["rows"] == len(rows) and set(rows[0]) == {"device", "seq", "ts", "spo2", "leaf",
                                                          "entry"}
    rc, line = _verify(out, exported["vkey"], capsys)
    assert rc == 0, line
    with Store.open(exported["data"]) as store:
        assert audit(store, exported["vkey"], workers=1).ok


def _cell(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows[7]["temp"] = 99.0
    return rows


def _row_name(exported: dict[str, Any], k: int) -> str:
    d = sorted(exported["msgs"])[k // 40]
    return f"row {k} ('{d}', {k % 40})"


def test_one_changed_cell_is_named(exported: dict[str, Any], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = _copy(exported, tmp_path)
    edit_rows(out, _cell)
    rc, line = _verify(out, exported["vkey"], capsys)
    assert rc == 1
    assert f"FAIL: data/readings.parquet {_row_name(exported, 7)}: temp is 99.0, its COSE " \
           "message says" in line, line


@pytest.mark.parametrize("case", ["drop", "swap", "duplicate"])
def test_dropped_swapped_duplicated_rows_are_named(exported: dict[str, Any], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   case: str) -> None:
    """The attacker edits the Parquet rows and readings.bin alike (and the digests)."""
    out = _copy(exported, tmp_path)

    def edit(items: list[Any]) -> list[Any]:
        if case == "drop":
            return items[:10] + items[11:]
        if case == "swap":
            items[10], items[11] = items[11], items[10]
            return items
        return items[:11] + [items[10]] + items[11:]

    edit_rows(out, edit)
    edit_messages(out, edit)
    rc, line = _verify(out, exported["vkey"], capsys)
    assert rc == 1
    first = {"drop": 10, "swap": 10, "duplicate": 11}[case]
    seq = {"drop": 11, "swap": 11, "duplicate": 10}[case]
    assert f"data/readings.parquet row {first} ('ward-0', {seq}): the batch proofs anchored " \
           "another message at this row" in line, line


def test_a_forged_added_row_is_named(exported: dict[str, Any], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from helpers_readings import Device

    out = _copy(exported, tmp_path)
    mallory = Device("ward-0")  # same id, another key: a message the device never signed
    forged = mallory.message(40, bytes(32), {"temp": 37.0, "hr": 70, "spo2": 99}, 1_735_700_000)
    edit_messages(out, lambda m: m[:40] + [forged] + m[40:])

    def add(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        new = dict(rows[39], seq=40, temp=37.0, hr=70.0, spo2=99.0, leaf=merkle.leaf_hash(forged))
        return rows[:40] + [new] + rows[40:]

    edit_rows(out, add)
    rc, line = _verify(out, exported["vkey"], capsys)
    assert rc == 1
    assert "row 40 ('ward-0', 40): the signature does not verify (bad_signature)" in line, line


def test_a_cose_message_replaced_by_another_valid_one_is_named(
        exported: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _copy(exported, tmp_path)
    other = exported["msgs"]["ward-0"][20]  # a genuine, anchored message of the same device
    edit_messages(out, lambda m: m[:5] + [other] + m[6:])
    rc, line = _verify(out, exported["vkey"], capsys)
    assert rc == 1
    assert "row 5 ('ward-0', 5): device, seq are ('ward-0', 5), its COSE message says " \
           "('ward-0', 20)" in line, line
    # the attacker also rewrites the row to match the message: the batch proofs still tell
    rows = pq.read_table(exported["out"] / DATA).to_pylist()

    def match(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rs[5] = dict(rows[20])
        return rs

    edit_rows(out, match)
    rc, line = _verify(out, exported["vkey"], capsys)
    assert rc == 1
    assert "row 5 ('ward-0', 20): the batch proofs anchored another message" in line, line


def test_a_checkpoint_signed_by_another_key_is_named(exported: dict[str, Any], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = _copy(exported, tmp_path)
    path = out / "provenance/ledger.json"
    led = json.loads(path.read_text())
    cp = note.parse_checkpoint(led["checkpoint"].split("\n\n")[0] + "\n")
    led["checkpoint"] = note.sign_checkpoint(cp.size, cp.root, note.generate_key())
    path.write_text(json.dumps(led))
    fix_digest(out, "provenance/ledger.json")
    rc, line = _verify(out, exported["vkey"], capsys)
    assert rc == 1
    assert line.startswith("FAIL: provenance/ledger.json: the checkpoint does not verify with "
                           "the gateway key"), line


def test_file_digests_and_listing(exported: dict[str, Any], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = _copy(exported, tmp_path)
    edit_rows(out, _cell)
    meta = json.loads((exported["out"] / "croissant.json").read_text())
    (out / "croissant.json").write_text(json.dumps(meta))  # the old digest again
    rc, line = _verify(out, exported["vkey"], capsys)
    assert rc == 1 and line.startswith("FAIL: data/readings.parquet: sha256 "), line
    shutil.copy(exported["out"] / DATA, out / DATA)
    (out / "data" / "extra.parquet").write_bytes(b"x")
    rc, line = _verify(out, exported["vkey"], capsys)
    assert rc == 1 and "data/extra.parquet: the file is not in croissant.json" in line, line
    (out / "data" / "extra.parquet").unlink()
    (out / "croissant.json").unlink()
    rc, line = _verify(out, exported["vkey"], capsys)
    assert rc == 1 and "croissant.json is missing" in line, line


def test_the_checkpoint_option(exported: dict[str, Any], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    led = json.loads((exported["out"] / "provenance/ledger.json").read_text())
    same = tmp_path / "same.note"
    same.write_text(led["checkpoint"])
    rc, line = _verify(exported["out"], exported["vkey"], capsys, "--checkpoint", str(same))
    assert rc == 0, line
    with Store.open(exported["data"]) as store:
        older = store.one("SELECT note FROM checkpoints WHERE size = 3")[0]
        key = store.load_signer()
    cp = note.verify_checkpoint(led["checkpoint"], exported["vkey"])
    fork = tmp_path / "fork.note"
    fork.write_text(note.sign_checkpoint(cp.size, bytes(32), key))
    rc, line = _verify(exported["out"], exported["vkey"], capsys, "--checkpoint", str(fork))
    assert rc == 1 and "signed two different trees of the same size" in line, line
    old = tmp_path / "old.note"
    old.write_text(older)
    rc, line = _verify(exported["out"], exported["vkey"], capsys, "--checkpoint", str(old))
    assert rc == 1 and "has size 3" in line and "needs a consistency proof" in line, line
    assert f"'iot-anchor ledger prove --from 3 --to {cp.size} > PROOF'" in line, line


def _prove(data: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main(["ledger", "prove", "--data", str(data), *args]) == 0
    return capsys.readouterr().out


def test_a_checkpoint_of_another_size_with_a_consistency_proof(
        exported: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An older trusted checkpoint, and a newer one (the log grew after the export), each
    checked against the provenance's by the proof `ledger prove` gives; a proof that does not
    hold, one for other sizes, and a second tree signed for one size are named."""
    from gateway.fleet import registry
    from gateway.ingest.pipeline import Pipeline
    from tests.helpers_readings import Device

    out, vkey = exported["out"], exported["vkey"]
    cp = note.verify_checkpoint(json.loads((out / "provenance/ledger.json").read_text())[
        "checkpoint"], vkey)
    data = tmp_path / "data"  # the gateway, grown after the export
    shutil.copytree(exported["data"], data)
    with Store.open(data) as store:
        old_note = store.checkpoint_note(3)
        late = Device("late-1")
        registry.add(store, late.id, late.public_bytes)
        with Pipeline(store, workers=1, processes=False) as p:
            for _ in range(3):
                p.submit([late.next({"hr": 70.0})])
                p.commit()
        newest = store.latest_checkpoint()
        key = store.load_signer()
    assert old_note is not None and newest is not None and newest[0] > cp.size
    older, newer = tmp_path / "older.note", tmp_path / "newer.note"
    older.write_text(old_note)
    newer.write_text(newest[1])
    # older trusted checkpoint: proof from 3 to the provenance's size
    up = tmp_path / "up.proof"
    up.write_text(_prove(data, capsys, "--from", "3", "--to", str(cp.size)))
    assert up.read_text().startswith("old 3\n")
    rc, line = _verify(out, vkey, capsys, "--checkpoint", str(older), "--consistency", str(up))
    assert rc == 0, line
    # newer trusted checkpoint: without a proof it is named, with one it holds
    rc, line = _verify(out, vkey, capsys, "--checkpoint", str(newer))
    assert rc == 1 and f"--from {cp.size} --to {newest[0]}" in line, line
    down = tmp_path / "down.proof"
    down.write_text(_prove(data, capsys, "--from", str(cp.size)))  # --to: the latest
    rc, line = _verify(out, vkey, capsys, "--checkpoint", str(newer), "--consistency", str(down))
    assert rc == 0, line
    # a proof for other sizes, a changed hash, a second tree signed for the newer size
    rc, line = _verify(out, vkey, capsys, "--checkpoint", str(newer), "--consistency", str(up))
    assert rc == 1 and f"not from {cp.size} to {newest[0]}" in line, line
    lines = down.read_text().split("\n")
    lines[1] = ("B" if lines[1][0] != "B" else "C") + lines[1][1:]
    bad = tmp_path / "bad.proof"
    bad.write_text("\n".join(lines))
    rc, line = _verify(out, vkey, capsys, "--checkpoint", str(newer), "--consistency", str(bad))
    assert rc == 1 and "is not consistent with the one in" in line, line
    forked = tmp_path / "forked.note"
    forked.write_text(note.sign_checkpoint(newest[0], bytes(32), key))
    rc, line = _verify(out, vkey, capsys, "--checkpoint", str(forked), "--consistency",
                       str(down))
    assert rc == 1 and "signed two different trees of the same size" in line, line
    # bad requests of `ledger prove`, and --consistency alone
    for args, want in ((["--from", "0"], "is not between 1 and"),
                       (["--from", "2", "--to", "999999"], "no stored checkpoint of size")):
        capsys.readouterr()
        assert main(["ledger", "prove", "--data", str(data), *args]) == 2
        assert want in capsys.readouterr().err
    assert main(["dataset", "verify", str(out), "--gateway-key", vkey, "--consistency",
                 str(down)]) == 2
    assert "--consistency needs --checkpoint FILE" in capsys.readouterr().err


def test_bad_input_gets_a_clear_error(exported: dict[str, Any], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    data = str(exported["data"])
    cases = [
        (["--device", "nobody"], "unknown device(s): nobody"),
        (["--since", "2030-01-01"], "the selection holds no anchored reading"),
        (["--sensor", "co2"], "the selection holds no anchored reading"),
        (["--since", "yesterday"], "neither ISO 8601 nor unix seconds"),
        (["--since", "2025-02-01", "--until", "2025-01-01"], "is not before --until"),
    ]
    for extra, msg in cases:
        out = tmp_path / "o"
        capsys.readouterr()
        assert main(["dataset", "export", str(out), "--name", "x", *extra, "--data", data]) == 2
        assert msg in capsys.readouterr().err
        assert not out.exists()  # nothing left behind
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    assert main(["dataset", "export", str(full), "--name", "x", "--data", data]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (full / "keep.txt").read_text() == "mine"
    assert main(["dataset", "export", str(tmp_path / "n"), "--name", "bad name", "--data",
                 data]) == 2
    assert "must be 1 to 128 characters" in capsys.readouterr().err
    rc, line = _verify(tmp_path / "nowhere", exported["vkey"], capsys)
    assert rc == 1 and "is not a directory" in line


def test_a_full_disk_leaves_nothing_a_verify_would_accept(
        exported: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC in the middle of the export (the Parquet writer's sink fails): a clear error,
    the output removed; the empty directory given by the user is kept, empty."""
    import errno

    import gateway.provenance.export as ex

    real = ex.reading_record
    count = {"n": 0}

    def failing(cose: bytes) -> bytes:
        count["n"] += 1
        if count["n"] > 50:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(cose)

    monkeypatch.setattr(ex, "reading_record", failing)
    out = tmp_path / "out"
    out.mkdir()
    with Store.open(exported["data"]) as store:
        before = store.entry_count()
    capsys.readouterr()
    assert main(["dataset", "export", str(out), "--name", "x", "--data",
                 str(exported["data"])]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "free space on the disk" in err, err
    assert out.is_dir() and not any(out.iterdir())
    with Store.open(exported["data"]) as store:
        assert store.entry_count() == before  # nothing anchored


def test_ledger_verify_recomputes_dataset_entries(tmp_path: Path) -> None:
    data = tmp_path / "d"
    vkey, _devs, _msgs = anchored_ledger(data, devices=2, per_device=10)
    with Store.open(data) as store:
        signer = store.load_signer()
        n = store.entry_count()
        good = {"name": "a", "rows": 20, "selection": {"devices": [], "sensors": [],
                                                       "below": n}, "files": [
            {"path": DATA, "sha256": bytes(32)}]}
        from gateway.provenance.dataset import Selection
        from gateway.provenance.select import dataset_root_of
        rows, root = dataset_root_of(store, Selection((), (), n))
        assert rows == 20
        store.append_record(signer, "dataset", {**good, "root": root})
        assert audit(store, vkey, workers=1).ok
        i, _ = store.append_record(signer, "dataset", {**good, "root": bytes(32)})
        j, _ = store.append_record(signer, "dataset", {**good, "rows": 19, "root": root})
        res = audit(store, vkey, workers=1)
        assert res.problems == [
            f"entries {i}: dataset 'a': the root over its selection {root.hex()} is not the "
            f"entry's {bytes(32).hex()}",
            f"entries {j}: dataset 'a' says 19 rows, its selection gives 20"], res.problems
        e = decode_entry(store.entry_body(i) or b"")
        assert isinstance(e, RecordEntry) and e.kind == "dataset"


def _tmpfs_ok() -> bool:
    import os
    import shutil as sh
    import subprocess
    import tempfile

    if os.geteuid() != 0 or not sh.which("mount"):
        return False
    d = tempfile.mkdtemp(prefix="iot-anchor-tmpfs-probe-")
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", d], capture_output=True)
        return ok
    finally:
        sh.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(not _tmpfs_ok(), reason="needs root and mount to make a small tmpfs")
def test_an_out_on_a_full_disk(exported: dict[str, Any], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """OUT on a 16 KiB tmpfs: the export fails with the disk's error and what to do, the
    directory it created is gone, and nothing was anchored."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)], check=True)
    try:
        with Store.open(exported["data"]) as store:
            before = store.entry_count()
        capsys.readouterr()
        assert main(["dataset", "export", str(mnt / "out"), "--name", "x", "--data",
                     str(exported["data"])]) == 2
        err = capsys.readouterr().err
        assert "No space left on device" in err and "free space on the disk" in err, err
        assert not (mnt / "out").exists()
        with Store.open(exported["data"]) as store:
            assert store.entry_count() == before
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_sensor_named_like_a_column(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from helpers_readings import Device

    from gateway.fleet import registry
    from gateway.ingest.pipeline import Pipeline

    data = tmp_path / "d"
    store, vkey = Store.create(data)
    dv = Device("odd-1")
    with store:
        registry.add(store, dv.id, dv.public_bytes)
        pipe = Pipeline(store, workers=1)
        pipe.submit([dv.next({"temp": 20.0, "seq": 1.0}) for _ in range(3)])
        pipe.commit()
        pipe.close()
    out = tmp_path / "o"
    capsys.readouterr()
    assert main(["dataset", "export", str(out), "--name", "x", "--data", str(data)]) == 2
    assert "sensor name(s) ['seq'] clash with the columns" in capsys.readouterr().err
    assert not out.exists()
    assert main(["dataset", "export", str(out), "--name", "x", "--sensor", "temp", "--data",
                 str(data)]) == 0
    rc, line = _verify(out, vkey, capsys)
    assert rc == 0, line


def test_damaged_files_fail_without_a_traceback(exported: dict[str, Any], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Bytes flipped in each provenance file (digests fixed): a FAIL line naming the file."""
    for rel in ("data/readings.parquet", "provenance/batches.cbor", "provenance/ledger.json",
                "provenance/readings.bin"):
        out = tmp_path / rel.replace("/", "_")
        shutil.copytree(exported["out"], out)
        raw = bytearray((out / rel).read_bytes())
        for k in range(len(raw) // 3, len(raw) // 3 + 64):
            raw[k] ^= 0x5A
        (out / rel).write_bytes(bytes(raw))
        fix_digest(out, rel)
        rc, line = _verify(out, exported["vkey"], capsys)
        assert rc == 1 and line.startswith("FAIL: "), (rel, line)


def test_rotated_and_revoked_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Readings signed before and after a key rotation, and by a device revoked since, verify
    against the key each had at its batch entry; without the rotation's registry entry the
    later readings do not."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from helpers_readings import Device

    from gateway.fleet import registry
    from gateway.ingest.pipeline import Pipeline

    data = tmp_path / "d"
    store, vkey = Store.create(data)
    a, b = Device("bed-a"), Device("bed-b")
    with store:
        registry.add(store, a.id, a.public_bytes)
        registry.add(store, b.id, b.public_bytes)
        pipe = Pipeline(store, workers=1)
        pipe.submit([a.next({"t": 1.0}), b.next({"t": 2.0})])
        pipe.commit()
        pipe.close()
        a.key = ec.generate_private_key(ec.SECP256R1())
        registry.rotate(store, a.id, a.public_bytes)
        pipe = Pipeline(store, workers=1)
        assert all(o.status == "accepted" for o in pipe.submit([a.next({"t": 3.0}),
                                                                b.next({"t": 4.0})]))
        pipe.commit()
        pipe.close()
        registry.revoke(store, b.id)
    out = tmp_path / "o"
    assert main(["dataset", "export", str(out), "--name", "x", "--data", str(data)]) == 0
    rc, line = _verify(out, vkey, capsys)
    assert rc == 0 and ", 4 rows," in line, line
    # the provenance without the rotation entry: bed-a seq 1 has no key that verifies it
    path = out / "provenance/ledger.json"
    led = json.loads(path.read_text())
    led["entries"] = [e for e in led["entries"]
                      if getattr(decode_entry(bytes.fromhex(e["cbor"])), "action", "") != "rotate"]
    path.write_text(json.dumps(led))
    fix_digest(out, "provenance/ledger.json")
    rc, line = _verify(out, vkey, capsys)
    assert rc == 1 and "row 1 ('bed-a', 1): the signature does not verify" in line, line
