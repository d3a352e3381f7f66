"""The verifier pool's worker processes: same answers as in-process, the device keys follow
registry changes, a dead worker costs no message, and no worker outlives its parent."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.fleet import registry
from gateway.ingest.pipeline import Pipeline
from gateway.ingest.verifier import VerifierPool
from gateway.storage.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers_readings import Device, high_s_twin  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def chain(dev: Device, n: int, start: int = 0) -> list[bytes]:
    out, prev = [], bytes(32)
    for seq in range(start + n):
        m = dev.message(seq, prev, {"t": seq / 4})
        prev = hashlib.sha256(m).digest()
        if seq >= start:
            out.append(m)
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by a dead parent's init) counts as gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_processes_give_the_same_outcomes_as_the_calling_thread(tmp_path: Path) -> None:
    devs = [Device(f"p{i}") for i in range(4)]
    msgs: list[bytes] = []
    for d in devs:
        msgs += chain(d, 60)
    bad = [msgs[5][:-1] + bytes([msgs[5][-1] ^ 1]), high_s_twin(msgs[7]), b"\xd2\x84junk",
           Device("stranger").message(0, bytes(32))]
    work = msgs[:100] + bad + msgs[100:]
    answers = []
    for workers in (1, 2):  # 1: everything in the calling thread; 2: two worker processes
        s, _ = Store.create(tmp_path / f"data{workers}")
        for d in devs:
            registry.add(s, d.id, d.public_bytes)
        with Pipeline(s, batch_max=4096, workers=workers) as p:
            outs = p.submit(work)
            if workers == 2:
                procs = p.pool.worker_processes()
                assert len(procs) == 2 and all(w.pid != os.getpid() for w in procs)
            p.commit()
        answers.append([(o.status, o.reason, o.dev, o.seq) for o in outs])
        s.close()
    assert answers[0] == answers[1]
    assert [a[1] for a in answers[1][100:104]] == ["bad_signature", "high_s", "bad_protected",
                                                   "unknown_device"]


def test_workers_follow_registry_changes(store: Store) -> None:
    a, b = Device("ka"), Device("kb")
    registry.add(store, a.id, a.public_bytes)
    with Pipeline(store, batch_max=4096, workers=2) as p:
        first = p.submit(chain(a, 40) + chain(b, 40))
        assert {o.reason for o in first[40:]} == {"unknown_device"}
        with Store.open(store.data_dir) as other:  # another process's change (data_version)
            registry.add(other, b.id, b.public_bytes)
            registry.revoke(other, a.id)
        again = p.submit(chain(a, 40, 40) + chain(b, 40))
        assert {o.reason for o in again[:40]} == {"revoked_device"}
        assert {o.status for o in again[40:]} == {"accepted"}


def test_a_killed_worker_loses_no_message(store: Store) -> None:
    d = Device("kill")
    registry.add(store, d.id, d.public_bytes)
    msgs = chain(d, 600)
    with Pipeline(store, batch_max=4096, workers=2) as p:
        p.pool.start()
        victim = p.pool.worker_processes()[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        outs = p.submit(msgs)  # chunks sent to the dead worker run in this thread instead
        assert [o.status for o in outs] == ["accepted"] * 600
        outs = p.submit(chain(d, 100, 600))  # and the next submission gets a new worker
        assert [o.status for o in outs] == ["accepted"] * 100
        assert all(w.poll() is None for w in p.pool.worker_processes())
        assert p.commit().readings == 700  # type: ignore[union-attr]


def test_close_stops_the_workers() -> None:
    pool = VerifierPool(2)
    pool.start()
    procs = pool.worker_processes()
    pool.close()
    assert all(p.poll() is not None for p in procs)


def test_no_worker_outlives_a_killed_parent(tmp_path: Path) -> None:
    """SIGKILL gives the parent no chance to clean up: the workers see their task pipe close
    and exit by themselves."""
    code = ("import os, sys, time\n"
            "from gateway.ingest.verifier import VerifierPool\n"
            "pool = VerifierPool(2)\n"
            "pool.start()\n"
            "print(' '.join(str(w.proc.pid) for w in pool._procs), flush=True)\n"
            "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert parent.stdout is not None
        pids = [int(x) for x in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in pids)
    finally:
        parent.kill()
        parent.wait()
