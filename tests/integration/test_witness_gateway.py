"""The gateway's side of witnessing: the witness client gathers cosignatures, /checkpoint and
receipts carry them, verify-receipt counts them, tlog-proof receipts, a witness that is down,
ledger verify --checkpoint."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.fleet import registry
from gateway.ledger import note
from gateway.ledger.cosignature import cosignatures, parse_witness_vkey
from gateway.ledger.tlog_proof import HEADER
from gateway.sim.broker import free_port
from gateway.storage.store import Store
from gateway.tlog.witness_client import WitnessClient, parse_witness_arg
from tests.helpers_readings import Device
from tests.integration.test_witness import _start


def _witnesses(tmp_path: Path, capsys: pytest.CaptureFixture[str], gw_vkey: str, n: int
               ) -> tuple[list[object], list[str], list[str]]:
    procs, urls, vkeys = [], [], []
    for k in range(n):
        key = tmp_path / f"w{k}.key"
        assert main(["witness", "init", "--key", str(key), "--name", f"witness.test/w{k}"]) == 0
        vkeys.append(capsys.readouterr().out.strip().splitlines()[-1])
        p, url = _start(key, tmp_path / f"wd{k}", gw_vkey)
        procs.append(p)
        urls.append(url)
    return procs, urls, vkeys


async def _gather(data: Path, pairs: list[tuple[str, str]], want: int, quorum: int | None = None,
                  timeout: float = 20) -> WitnessClient:
    client = WitnessClient(data, pairs, quorum)
    stop = asyncio.Event()
    task = asyncio.create_task(client.run(stop))
    loop = asyncio.get_running_loop()
    t_end = loop.time() + timeout
    while loop.time() < t_end:
        await asyncio.sleep(0.1)
        with Store.open(data, readonly=True) as s:
            cp = s.latest_checkpoint()
            if cp and len(s.cosignature_lines(cp[0])) >= want:
                break
    stop.set()
    await task
    return client


def _plain_tlog_proof_check(text: str, size: int) -> None:
    """What any tlog-proof tool does, from the spec alone: leaf hash from the entry bytes,
    RFC 9162 inclusion verification to the checkpoint's root."""
    import base64
    import hashlib

    import cbor2

    head, cp = text.split("\n\n", 1)
    lines = head.split("\n")
    extra = cbor2.loads(base64.b64decode(lines[1].removeprefix("extra ")))
    index = int(lines[2].removeprefix("index "))
    proof = [base64.b64decode(x) for x in lines[3:]]
    origin, n, root_b64 = cp.split("\n")[:3]
    assert int(n) == size
    h = lambda b: hashlib.sha256(b).digest()  # noqa: E731
    r = h(b"\x00" + extra["entry"])
    fn, sn = index, size - 1
    for p in proof:
        if fn & 1 or fn == sn:
            r = h(b"\x01" + p + r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = h(b"\x01" + r + p)
        fn >>= 1
        sn >>= 1
    assert sn == 0 and r == base64.b64decode(root_b64)


def test_cosignatures_reach_receipts_and_verify(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    store, vkey = Store.create(tmp_path / "d")
    for k in range(5):
        registry.add(store, f"dev{k}", Device(f"dev{k}").public_bytes)
    store.close()
    procs, urls, wkeys = _witnesses(tmp_path, capsys, vkey, 2)
    down = f"http://127.0.0.1:{free_port()}"
    try:
        pairs = [parse_witness_arg(f"{u}={v}") for u, v in zip(urls, wkeys, strict=True)]
        asyncio.run(_gather(tmp_path / "d", pairs, 2))
        with Store.open(tmp_path / "d") as s:
            size, text = s.latest_checkpoint() or (0, "")
            lines = s.cosignature_lines(size)
            full = text + "".join(lines)
            assert size == 5 and len(lines) == 2
            assert set(cosignatures(full, [parse_witness_vkey(v) for v in wkeys])) == set(wkeys)
            registry.add(s, "dev9", Device("dev9").public_bytes)  # one more, not cosigned
        # the receipt's checkpoint is the cosigned one (size 5), not the newer bare one
        assert main(["receipt", "--entry", "2", "--data", str(tmp_path / "d")]) == 0
        rc = json.loads(capsys.readouterr().out)
        assert rc["entry"]["size"] == 5 and rc["checkpoint"] == full
        (tmp_path / "r.json").write_text(json.dumps(rc))
        args = ["verify-receipt", str(tmp_path / "r.json"), "--gateway-key", vkey,
                "--witness-key", *wkeys]
        assert main([*args, "--witness-quorum", "2"]) == 0
        assert "cosigned by 2 of 2" in capsys.readouterr().out
        other = tmp_path / "other.key"
        main(["witness", "init", "--key", str(other)])
        okey = capsys.readouterr().out.strip().splitlines()[-1]
        assert main([*args[:4], "--witness-key", wkeys[0], okey, "--witness-quorum", "2"]) == 1
        assert "1 valid cosignature(s)" in capsys.readouterr().out
        assert main([*args[:4], "--witness-key", wkeys[0], okey, "--witness-quorum", "1"]) == 0
        capsys.readouterr()
        # a tampered cosignature fails, naming it
        bad = dict(rc, checkpoint=full[:-10] + ("A" if full[-10] != "A" else "B") + full[-9:])
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        assert main(["verify-receipt", str(tmp_path / "bad.json"), "--gateway-key", vkey,
                     "--witness-key", *wkeys]) == 1
        assert "FAIL" in capsys.readouterr().out
        # the same receipt as a C2SP tlog-proof
        assert main(["receipt", "--entry", "2", "--format", "tlog-proof",
                     "--data", str(tmp_path / "d")]) == 0
        proof = capsys.readouterr().out
        lines_ = proof.split("\n")
        assert lines_[0] == HEADER and lines_[1].startswith("extra ") and lines_[2] == "index 2"
        assert proof.endswith(full)
        _plain_tlog_proof_check(proof, 5)
        (tmp_path / "p.tlog-proof").write_text(proof)
        assert main(["verify-receipt", str(tmp_path / "p.tlog-proof"), "--gateway-key", vkey,
                     "--witness-key", *wkeys]) == 0
        assert "ledger entry 2 (device)" in capsys.readouterr().out
        # malformed tlog-proofs fail with the reason
        for bad_proof, why in [(proof.replace("index 2", "index 02"), "not a decimal"),
                               (proof.split("\n\n")[0], "no empty line"),
                               (proof.replace(lines_[1], "extra !!"), "not base64"),
                               (proof.replace(lines_[3], lines_[3][:-4] + "AAA="), "FAIL")]:
            (tmp_path / "b.tlog-proof").write_text(bad_proof)
            assert main(["verify-receipt", str(tmp_path / "b.tlog-proof"), "--gateway-key",
                         vkey]) == 1
            assert why in capsys.readouterr().out
        # one witness is down: the other still cosigns; ledger status names both
        pairs.append(parse_witness_arg(f"{down}={okey}"))
        asyncio.run(_gather(tmp_path / "d", pairs, 2, quorum=2, timeout=5))
        assert main(["ledger", "status", "--json", "--data", str(tmp_path / "d")]) == 0
        st = json.loads(capsys.readouterr().out)
        states = {w["url"]: (w["state"], w["size"]) for w in st["witnesses"]}
        assert states[urls[0]] == ("ok", 6) and states[urls[1]] == ("ok", 6)
        assert states[down][0] == "error" and st["witness_quorum"] == 2
        assert main(["ledger", "status", "--data", str(tmp_path / "d")]) == 0
        out = capsys.readouterr().out
        assert "witnesses: 3, quorum 2, witnessed up to size 6" in out and "unreachable" in out
    finally:
        for p in procs:
            p.terminate()  # type: ignore[attr-defined]
            p.wait(10)  # type: ignore[attr-defined]


def test_ledger_verify_against_a_saved_checkpoint(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "d"
    store, vkey = Store.create(d)
    for k in range(3):
        registry.add(store, f"a{k}", Device(f"a{k}").public_bytes)
    store.close()
    shutil.copytree(d, tmp_path / "old")  # a backup at size 3
    store = Store.open(d)
    for k in range(3):
        registry.add(store, f"b{k}", Device(f"b{k}").public_bytes)
    saved = (store.latest_checkpoint() or (0, ""))[1]
    store.close()
    (tmp_path / "cp").write_text(saved)
    assert main(["ledger", "verify", "--data", str(d), "--checkpoint", str(tmp_path / "cp")]) == 0
    capsys.readouterr()
    # the old copy: rolled back to size 3
    assert main(["ledger", "verify", "--data", str(tmp_path / "old"),
                 "--checkpoint", str(tmp_path / "cp")]) == 1
    assert "rolled back to size 3" in capsys.readouterr().out
    # the old copy grown with other entries by the same key: rewritten, diverges at size 6
    store = Store.open(tmp_path / "old")
    for k in range(3):
        registry.add(store, f"c{k}", Device(f"c{k}").public_bytes)
    store.close()
    assert main(["ledger", "verify", "--data", str(tmp_path / "old"),
                 "--checkpoint", str(tmp_path / "cp")]) == 1
    out = capsys.readouterr().out
    assert "diverges from it at size 6" in out
    # a checkpoint by another key is refused with a clear message
    other = note.sign_checkpoint(1, bytes(32), note.generate_key())
    (tmp_path / "x").write_text(other)
    assert main(["ledger", "verify", "--data", str(d), "--checkpoint", str(tmp_path / "x")]) == 2
    assert "does not verify with the gateway key" in capsys.readouterr().err
