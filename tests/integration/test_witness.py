"""C2SP tlog-witness: the status codes of add-checkpoint, cosignatures checked with
`cryptography` alone, and a witness that never cosigns two inconsistent checkpoints across
SIGKILLs."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.cli import main
from gateway.ledger import merkle, note
from gateway.ledger.cosignature import format_add_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _leaves(tag: bytes, n: int, common: int = 0) -> list[bytes]:
    return [merkle.leaf_hash(b"common %d" % i if i < common else tag + b" %d" % i)
            for i in range(n)]


class Log:
    """A log (a gateway key) with a tree of leaf hashes; signs checkpoints and proofs."""

    def __init__(self, key: object, leaves: list[bytes]) -> None:
        self.key = key
        self.leaves = leaves
        self.vkey = note.vkey_from_private(key)  # type: ignore[arg-type]

    def checkpoint(self, size: int) -> str:
        return note.sign_checkpoint(size, merkle.root(self.leaves[:size]), self.key)  # type: ignore[arg-type]

    def request(self, old: int, size: int) -> bytes:
        proof = merkle.consistency_proof(self.leaves, old, size) if 0 < old < size else []
        return format_add_checkpoint(old, proof, self.checkpoint(size))


def _post(url: str, body: bytes) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url + "/add-checkpoint", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def _start(key: Path, data: Path, *logs: str) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "gateway", "witness", "serve", "--key", str(key),
                          "--http", "127.0.0.1:0", "--data", str(data), "--log", *logs],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert p.stdout is not None
    line = p.stdout.readline()
    if " serving on " not in line:
        p.kill()
        raise AssertionError(f"witness did not start: {line!r} {p.communicate()[1][-2000:]}")
    return p, line.rsplit(" ", 1)[1].strip()


def _witness_key(tmp_path: Path, capsys: object) -> tuple[Path, str]:
    key = tmp_path / "w.key"
    assert main(["witness", "init", "--key", str(key), "--name", "witness.test/w1"]) == 0
    vkey = capsys.readouterr().out.strip().splitlines()[-1]  # type: ignore[attr-defined]
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    return key, vkey


def _check_cosignature(line: str, checkpoint: str, wvkey: str) -> int:
    """Verify a cosignature line with `cryptography` alone, from the spec's text."""
    name, kid_hex, b64 = wvkey.split("+", 2)
    blob = base64.b64decode(b64)
    assert blob[0] == 0x04 and len(blob) == 33
    pub = blob[1:]
    assert hashlib.sha256(name.encode() + b"\n\x04" + pub).digest()[:4].hex() == kid_hex
    assert line.startswith("\u2014 " + name + " ") and line.endswith("\n")
    sig = base64.b64decode(line.rstrip("\n").split(" ")[2])
    assert sig[:4].hex() == kid_hex and len(sig) == 76
    ts = int.from_bytes(sig[4:12], "big")
    assert abs(ts - time.time()) < 600
    text = checkpoint[:checkpoint.index("\n\n") + 1]
    Ed25519PublicKey.from_public_bytes(pub).verify(
        sig[12:], b"cosignature/v1\ntime %d\n" % ts + text.encode())
    return ts


def test_add_checkpoint_status_codes(tmp_path: Path, capsys: object) -> None:
    key, wvkey = _witness_key(tmp_path, capsys)
    log = Log(note.generate_key(), _leaves(b"a", 40, common=6))
    other = Log(note.generate_key(), _leaves(b"b", 40))
    fork = Log(log.key, _leaves(b"f", 40, common=6))
    p, url = _start(key, tmp_path / "wd", log.vkey)
    try:
        assert _post(url, other.request(0, 5))[0] == 404  # unknown origin
        empty_bad = note.sign_checkpoint(0, bytes(32), log.key)  # type: ignore[arg-type]
        assert _post(url, format_add_checkpoint(0, [], empty_bad))[0] == 422
        empty = note.sign_checkpoint(0, merkle.EMPTY_ROOT, log.key)  # type: ignore[arg-type]
        assert _post(url, format_add_checkpoint(0, [bytes(32)], log.checkpoint(3)))[0] == 422
        assert _post(url, format_add_checkpoint(0, [], empty))[0] == 200
        cp = log.checkpoint(5)
        forged = cp.replace("\n5\n", "\n6\n")
        assert _post(url, format_add_checkpoint(0, [], forged))[0] == 403
        unsigned = cp[:cp.index("\n\n") + 2] + note.sign_note(
            cp[:cp.index("\n\n") + 1], "someone-else", note.generate_key()).split("\n\n")[1]
        assert _post(url, format_add_checkpoint(0, [], unsigned))[0] == 403
        assert _post(url, log.request(9, 5))[0] == 400  # old above the size
        assert _post(url, b"old 01\n\n" + cp.encode())[0] == 400
        assert _post(url, b"garbage")[0] == 400
        status, body, _ = _post(url, log.request(0, 5))
        assert status == 200
        _check_cosignature(body.decode(), cp, wvkey)
        status, body, ctype = _post(url, log.request(0, 5))  # old is not the latest
        assert (status, body, ctype.split(";")[0]) == (409, b"5\n", "text/x.tlog.size")
        bad = format_add_checkpoint(5, [bytes(32)] * 3, log.checkpoint(10))
        assert _post(url, bad)[0] == 422
        # the same tree again (the fork shares its first 6 leaves): cosigned again
        assert _post(url, format_add_checkpoint(5, [], fork.checkpoint(5)))[0] == 200
        status, body, _ = _post(url, log.request(5, 10))
        assert status == 200
        _check_cosignature(body.decode(), log.checkpoint(10), wvkey)
        # the forked history, from the witness's size on: no consistency proof holds
        assert _post(url, fork.request(10, 12))[0] == 422
        assert _post(url, format_add_checkpoint(10, [], fork.checkpoint(10)))[0] == 422
        origin = hashlib.sha256(note.parse_checkpoint(
            log.checkpoint(10)[:log.checkpoint(10).index("\n\n") + 1]).origin.encode()).hexdigest()
        with urllib.request.urlopen(f"{url}/{origin}/checkpoint", timeout=10) as r:
            latest = r.read().decode()
        note.verify_checkpoint(latest, log.vkey)
        assert note.parse_checkpoint(latest[:latest.index("\n\n") + 1]).size == 10
        _check_cosignature(latest.split("\n\n")[1].splitlines(keepends=True)[-1], latest, wvkey)
    finally:
        p.terminate()
        p.wait(10)


def test_never_two_inconsistent_cosignatures_across_sigkills(tmp_path: Path,
                                                             capsys: object) -> None:
    key, _ = _witness_key(tmp_path, capsys)
    gw = note.generate_key()
    branches = {"a": Log(gw, _leaves(b"a", 400, common=3)),
                "b": Log(gw, _leaves(b"b", 400, common=3))}
    cosigned: list[tuple[int, str]] = []  # (size, root hex) of every 200
    lock = threading.Lock()
    rnd = random.Random(7)
    kills = 0

    def client(url: str, stop: threading.Event, seed: int) -> None:
        r = random.Random(seed)
        size = 0
        while not stop.is_set():
            name = r.choice("ab")
            b = branches[name]
            new = min(399, size + r.randint(0, 5))
            try:
                status, body, _ = _post(url, b.request(size, new))
            except OSError:
                return  # killed
            if status == 409:
                size = int(body)
            elif status == 200:
                with lock:
                    cosigned.append((new, merkle.root(b.leaves[:new]).hex()))
                size = new
            elif status == 422:
                size = size  # the other branch holds the witness: keep trying
            else:
                raise AssertionError(f"unexpected status {status}: {body[:200]!r}")

    for _ in range(32):
        p, url = _start(key, tmp_path / "wd", branches["a"].vkey)
        stop = threading.Event()
        threads = [threading.Thread(target=client, args=(url, stop, rnd.random()))
                   for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(rnd.uniform(0.05, 0.25))
        p.kill()  # SIGKILL, mid-cosigning
        p.wait(10)
        kills += 1
        stop.set()
        for t in threads:
            t.join(15)
    assert kills >= 30
    assert len(cosigned) > 30, "the clients got too few cosignatures to test anything"
    # every cosigned (size, root) lies on one single branch: pairwise consistent
    roots = {name: {n: merkle.root(b.leaves[:n]).hex() for n in range(400)}
             for name, b in branches.items()}
    on = [{name for name in "ab" if roots[name][n] == r} for n, r in cosigned]
    assert all(on), "a cosigned root belongs to neither history"
    assert set.intersection(*on), "the witness cosigned checkpoints of both forked histories"
