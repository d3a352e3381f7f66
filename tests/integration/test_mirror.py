"""`iot-anchor mirror`: a verified replica over HTTP; growth, rollback and fork evidence,
hostile servers."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.cli import main
from gateway.errors import ConfigError
from gateway.fleet import registry
from gateway.ingest.pipeline import Pipeline
from gateway.storage.store import Store
from tests.helpers_readings import Device
from tests.integration.test_http_server import _start_serve, _stop


def _anchor(store: Store, devs: list[Device], per: int, batch_max: int) -> None:
    with Pipeline(store, batch_max=batch_max, workers=1) as p:
        for _ in range(per):
            p.submit([d.next({"t": 21.0 + d.seq}) for d in devs])
        p.commit()


def _gateway(tmp_path: Path) -> tuple[Path, str, list[Device]]:
    d = tmp_path / "gw"
    store, vkey = Store.create(d)
    devs = [Device(f"dev{k}") for k in range(3)]
    for dv in devs:
        registry.add(store, dv.id, dv.public_bytes)
    _anchor(store, devs, 100, 1)  # 300 batch entries: past the first 256-entry tile
    newkey = ec.generate_private_key(ec.SECP256R1())
    devs[1].key = newkey
    registry.rotate(store, "dev1", devs[1].public_bytes)
    _anchor(store, devs, 30, 16)
    registry.revoke(store, "dev2")
    _anchor(store, devs[:2], 10, 7)
    store.close()
    return d, vkey, devs


def _mirror(url: str, data: Path, vkey: str, *extra: str) -> int:
    return main(["mirror", url, "--data", str(data), "--gateway-key", vkey, "--workers", "1",
                 *extra])


def test_mirror_replicates_grows_and_catches_a_rollback_and_a_fork(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gw, vkey, devs = _gateway(tmp_path)
    shutil.copytree(gw, tmp_path / "old")  # a backup of the gateway at this size
    m = tmp_path / "m"
    p, url = _start_serve(gw)
    try:
        assert _mirror(url, m, vkey) == 0
        out = capsys.readouterr().out
        assert "new readings verified" in out
        assert main(["ledger", "verify", "--data", str(m), "--workers", "1"]) == 0
        assert "ledger OK" in capsys.readouterr().out
        with Store.open(gw, readonly=True) as g, Store.open(m, readonly=True) as r:
            assert r.entry_count() == g.entry_count() > 300
            assert r.reading_count() == g.reading_count() == 300 + 90 + 20
            assert [(d.id, d.status, d.readings) for d in r.devices()] == \
                [(d.id, d.status, d.readings) for d in g.devices()]
        assert main(["receipt", "dev1", "120", "--data", str(m)]) == 0
        (tmp_path / "r.json").write_text(capsys.readouterr().out)
        assert main(["verify-receipt", str(tmp_path / "r.json"), "--gateway-key", vkey,
                     "--device-key", devs[1].public_hex]) == 0
        capsys.readouterr()
        # the receipt over HTTP is the same proof, and a batch bundle is immutable
        import urllib.request

        from gateway.ledger.receipt import parse_receipt, verify_receipt
        with urllib.request.urlopen(f"{url}/receipt/dev1/120", timeout=10) as resp:
            got = verify_receipt(parse_receipt(resp.read()), vkey, devs[1].public_bytes)
        assert (got.device, got.seq) == ("dev1", 120)
        with urllib.request.urlopen(f"{url}/batch/{got.entry_index}", timeout=10) as resp:
            assert "immutable" in resp.headers["Cache-Control"]
        # nothing new: a no-op round
        assert _mirror(url, m, vkey) == 0
        assert "0 new entries" in capsys.readouterr().out
        # the gateway grows (while serving): the mirror follows incrementally
        store = Store.open(gw)
        _anchor(store, devs[:2], 5, 3)
        store.close()
        assert _mirror(url, m, vkey) == 0
        assert main(["ledger", "verify", "--data", str(m), "--workers", "1"]) == 0
        assert main(["ledger", "status", "--data", str(m), "--json"]) == 0
        capsys.readouterr()
    finally:
        _stop(p)
    # a mirror is itself a log anyone can serve and mirror
    p, url = _start_serve(m)
    try:
        assert _mirror(url, tmp_path / "m2", vkey) == 0
        assert main(["ledger", "verify", "--data", str(tmp_path / "m2"), "--workers", "1"]) == 0
        with Store.open(m, readonly=True) as a, Store.open(tmp_path / "m2", readonly=True) as b:
            assert a.entry_count() == b.entry_count() and a.reading_count() == b.reading_count()
        capsys.readouterr()
    finally:
        _stop(p)
    # the old copy is served: a rollback, named, with both notes
    p, url = _start_serve(tmp_path / "old")
    try:
        assert _mirror(url, m, vkey) == 1
        err = capsys.readouterr().err
        assert "ROLLBACK" in err
        ev = sorted((m / "evidence").iterdir())[-1]
        assert main(["verify-evidence", str(ev), "--gateway-key", vkey]) == 0
        assert "rollback" in capsys.readouterr().out
    finally:
        _stop(p)
    # the old copy grown with other readings by the same key: a fork
    store = Store.open(tmp_path / "old")
    other = [Device("dev0", key=devs[0].key, seq=devs[0].seq - 10, prev=b"\0" * 32)]
    _anchor(store, other, 20, 4)
    store.close()
    p, url = _start_serve(tmp_path / "old")
    try:
        held = Store.open(m, readonly=True)
        before = (held.entry_count(), held.reading_count())
        held.close()
        assert _mirror(url, m, vkey) == 1
        err = capsys.readouterr().err
        assert "FORK" in err
        ev = next(e for e in (m / "evidence").iterdir() if "-fork" in e.name)
        assert {f.name for f in ev.iterdir()} == {"old.checkpoint", "new.checkpoint",
                                                  "evidence.json"}
        assert main(["verify-evidence", str(ev), "--gateway-key", vkey]) == 0
        assert "fork" in capsys.readouterr().out
        with Store.open(m, readonly=True) as r:
            assert (r.entry_count(), r.reading_count()) == before
        assert main(["ledger", "verify", "--data", str(m), "--workers", "1"]) == 0
    finally:
        _stop(p)


class _Hostile:
    """A server over a real data directory that alters what it serves (`mode`)."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.mode = "honest"
        self.loop = asyncio.new_event_loop()
        self.url = ""
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        from gateway.http.app import build_app
        from gateway.http.context import HttpContext

        ctx = HttpContext.for_data_dir(self.data)
        inner = build_app(ctx, token=None)

        @web.middleware
        async def tamper(request: web.Request, handler: Any) -> web.StreamResponse:
            resp = await handler(request)
            body = getattr(resp, "body", None)
            path = request.path
            if not isinstance(body, bytes):
                return resp
            if self.mode == "huge-checkpoint" and path == "/checkpoint":
                return web.Response(body=body + b"x" * 70000)
            if self.mode == "truncated" and path.startswith("/tile/entries/"):
                return web.Response(body=body[:-3])
            if self.mode == "wrong-tile" and path.startswith("/tile/0/"):
                return web.Response(body=bytes(32) + body[32:])
            if self.mode == "wrong-batch" and path.startswith("/batch/"):
                return web.Response(body=body[:-1] + bytes([body[-1] ^ 1]))
            return resp

        inner.middlewares.insert(0, tamper)  # type: ignore[attr-defined]
        runner = web.AppRunner(inner)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        self.runner = runner
        self.ctx = ctx
        ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        async def stop() -> None:
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.ctx.close()


def test_hostile_server_is_refused_and_the_replica_stays(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "gw"
    store, vkey = Store.create(d)
    dv = Device("h1")
    registry.add(store, "h1", dv.public_bytes)
    _anchor(store, [dv], 20, 5)
    store.close()
    h = _Hostile(d)
    m = tmp_path / "m"
    try:
        # the wrong gateway key, a gateway's own data directory: refused, clearly
        ostore, other = Store.create(tmp_path / "other")
        ostore.close()
        assert _mirror(h.url, tmp_path / "m-wrong", other) == 1
        assert "does not verify with the gateway key" in capsys.readouterr().err
        assert _mirror(h.url, d, vkey) == 2
        assert "not a mirror" in capsys.readouterr().err
        assert _mirror(h.url, m, vkey) == 0
        capsys.readouterr()
        store = Store.open(d)
        _anchor(store, [dv], 300, 1)  # grow past a tile boundary
        store.close()
        for mode, words in [("huge-checkpoint", "more than 65536 bytes"),
                            ("truncated", "truncated"),
                            ("wrong-tile", "tile tile/0/000"),
                            ("wrong-batch", "does not hash to its entry's root")]:
            h.mode = mode
            assert _mirror(h.url, m, vkey) == 1, mode
            err = capsys.readouterr().err
            assert words in err, (mode, err)
            with Store.open(m, readonly=True) as r:
                assert (r.entry_count(), r.reading_count()) == (5, 20), mode
        assert main(["ledger", "verify", "--data", str(m), "--workers", "1"]) == 0
        h.mode = "honest"
        assert _mirror(h.url, m, vkey) == 0
        with Store.open(m, readonly=True) as r:
            assert r.reading_count() == 320
        capsys.readouterr()
    finally:
        h.close()


def test_fork_attack_witnesses_refuse_and_the_mirror_stops(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second data directory with the gateway's key and other readings (a forked history)
    is shown to the witnesses and to the mirror after the real one."""
    from tests.integration.test_witness_gateway import _gather, _witnesses

    gw = tmp_path / "gw"
    store, vkey = Store.create(gw)
    dv = Device("f1")
    registry.add(store, "f1", dv.public_bytes)
    _anchor(store, [dv], 12, 4)
    store.close()
    shutil.copytree(gw, tmp_path / "fork")
    store = Store.open(gw)
    _anchor(store, [dv], 12, 4)  # the real history goes on
    store.close()
    twin = Device("f1", key=dv.key, seq=12, prev=b"\1" * 32)
    store = Store.open(tmp_path / "fork")
    _anchor(store, [twin], 16, 4)  # the forked one: other readings, a bigger tree
    store.close()
    procs, urls, wkeys = _witnesses(tmp_path, capsys, vkey, 2)
    pairs = [(u, v) for u, v in zip(urls, wkeys, strict=True)]
    m = tmp_path / "m"
    try:
        asyncio.run(_gather(gw, pairs, 2))
        p, url = _start_serve(gw)
        try:
            assert _mirror(url, m, vkey, "--witness-key", *wkeys) == 0
            assert "2 cosignatures" in capsys.readouterr().out
        finally:
            _stop(p)
        # the witnesses refuse the forked checkpoints (their consistency proofs fail)
        asyncio.run(_gather(tmp_path / "fork", pairs, 1, timeout=4))
        with Store.open(tmp_path / "fork", readonly=True) as f:
            size = (f.latest_checkpoint() or (0, ""))[0]
            assert f.cosignature_lines(size) == []
            states = f.witness_statuses()
        assert [s["state"] for s in states] == ["error", "error"]
        assert all("HTTP 422" in s["detail"] for s in states), states
        # the mirror stops with evidence that verifies
        p, url = _start_serve(tmp_path / "fork")
        try:
            assert _mirror(url, m, vkey) == 1
            assert "FORK" in capsys.readouterr().err
        finally:
            _stop(p)
        ev = sorted((m / "evidence").iterdir())[-1]
        assert main(["verify-evidence", str(ev), "--gateway-key", vkey]) == 0
        assert "fork: the gateway's tree of size" in capsys.readouterr().out
        # evidence that was tampered with proves nothing
        info = json.loads((ev / "evidence.json").read_text())
        info["prefix_root"] = "00" * 32
        (ev / "evidence.json").write_text(json.dumps(info))
        assert main(["verify-evidence", str(ev), "--gateway-key", vkey]) == 1
        assert main(["ledger", "verify", "--data", str(m), "--workers", "1"]) == 0
    finally:
        for pr in procs:
            pr.terminate()  # type: ignore[attr-defined]
            pr.wait(10)  # type: ignore[attr-defined]


def test_follow_survives_the_server_being_down(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    from gateway.sim.broker import free_port

    gw = tmp_path / "gw"
    store, vkey = Store.create(gw)
    dv = Device("w1")
    registry.add(store, "w1", dv.public_bytes)
    _anchor(store, [dv], 10, 5)
    store.close()
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))

    def serve() -> subprocess.Popen[str]:
        p = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--data", str(gw),
                              "--http", f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
        assert p.stdout is not None and p.stdout.readline().startswith("serving ")
        return p

    def held() -> int:
        if not (tmp_path / "m" / "ledger.db").exists():
            return 0
        try:
            with Store.open(tmp_path / "m", readonly=True) as r:
                return r.reading_count()
        except ConfigError:  # being created (its schema not written yet)
            return 0

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 30
        while held() < n:
            assert time.monotonic() < deadline, (tmp_path / "m.log").read_text()
            time.sleep(0.1)

    server = serve()
    log = open(tmp_path / "m.log", "w")
    m = subprocess.Popen([sys.executable, "-m", "gateway", "mirror", f"http://127.0.0.1:{port}",
                          "--data", str(tmp_path / "m"), "--gateway-key", vkey, "--follow",
                          "--interval", "0.2", "--workers", "1"],
                         stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(10)
        _stop(server)  # the gateway's server goes down; the mirror keeps trying
        store = Store.open(gw)
        _anchor(store, [dv], 10, 5)
        store.close()
        time.sleep(1.5)
        assert m.poll() is None and held() == 10
        server = serve()
        wait_for(20)
        m.send_signal(15)
        assert m.wait(15) == 0
        text = (tmp_path / "m.log").read_text()
        assert "retrying in" in text and "reachable again" in text, text
    finally:
        if m.poll() is None:
            m.kill()
            m.wait()
        if server.poll() is None:
            _stop(server)
        log.close()
    assert main(["ledger", "verify", "--data", str(tmp_path / "m"), "--workers", "1"]) == 0


def test_dataset_export_on_a_mirror(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A mirror signs nothing: it exports again a dataset the gateway anchored, proven under
    the mirror's checkpoint, and `dataset verify` accepts it."""
    gw = tmp_path / "gw"
    store, vkey = Store.create(gw)
    devs = [Device(f"s{k}") for k in range(2)]
    for dv in devs:
        registry.add(store, dv.id, dv.public_bytes)
    _anchor(store, devs, 30, 8)
    store.close()
    assert main(["dataset", "export", str(tmp_path / "ds-gw"), "--name", "ward",
                 "--data", str(gw)]) == 0
    store = Store.open(gw)
    _anchor(store, devs, 5, 8)  # more readings after the export: not in the dataset
    store.close()
    m = tmp_path / "m"
    p, url = _start_serve(gw)
    try:
        assert _mirror(url, m, vkey) == 0
    finally:
        _stop(p)
    capsys.readouterr()
    assert main(["dataset", "export", str(tmp_path / "ds-m"), "--name", "ward",
                 "--data", str(m)]) == 0
    capsys.readouterr()
    assert main(["dataset", "verify", str(tmp_path / "ds-m"), "--gateway-key", vkey]) == 0
    assert (tmp_path / "ds-m" / "data" / "readings.parquet").read_bytes() == \
        (tmp_path / "ds-gw" / "data" / "readings.parquet").read_bytes()
    # a new dataset cannot be anchored by a mirror; another selection is refused
    assert main(["dataset", "export", str(tmp_path / "x"), "--name", "other",
                 "--data", str(m)]) == 2
    assert "cannot anchor a new dataset" in capsys.readouterr().err
    assert main(["dataset", "export", str(tmp_path / "y"), "--name", "ward", "--device", "s0",
                 "--data", str(m)]) == 2
    assert "another selection" in capsys.readouterr().err
    with Store.open(m, readonly=True) as r, Store.open(gw, readonly=True) as g:
        assert r.entry_count() == g.entry_count()  # the mirror appended nothing


def test_mirror_and_serve_on_postgresql(tmp_path: Path, postgres: Any,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Either store on either side: a gateway's ledger in PostgreSQL is served (`serve
    --store`: the console's answers are those of the SQLite copy), mirrored into another
    PostgreSQL database (`mirror --store`), which verifies, gives receipts and is served and
    mirrored again into SQLite; the tiles are the same."""
    import urllib.request

    gw, vkey, devs = _gateway(tmp_path)
    src, dst = postgres.create_database("gw"), postgres.create_database("mirror")
    assert main(["store", "copy", "--from", f"sqlite:{gw}", "--to", src, "--data", str(gw)]) == 0
    capsys.readouterr()
    def answers(url: str) -> dict[str, Any]:
        """The console's API and /metrics: every one answers; the JSON ones, parsed."""
        out: dict[str, Any] = {}
        for path in ("/api/overview", "/api/devices", "/api/devices/dev1",
                     "/api/devices/dev1/series", "/api/events", "/api/records", "/metrics"):
            with urllib.request.urlopen(url + path, timeout=10) as resp:
                assert resp.status == 200, path
                body = resp.read()
                out[path] = body if path == "/metrics" else json.loads(body)
        return out

    p, url = _start_serve(gw)
    try:
        lite = answers(url)
    finally:
        _stop(p)
    p, url = _start_serve(gw, "--store", src)
    try:
        on_pg = answers(url)
        for path in ("/api/devices", "/api/devices/dev1/series", "/api/events"):
            assert on_pg[path] == lite[path], path  # the same answers from either store
        m = tmp_path / "m"
        assert _mirror(url, m, vkey, "--store", dst) == 0
        assert "new readings verified" in capsys.readouterr().out
        assert not (m / "ledger.db").exists()  # the replica is in PostgreSQL
        with urllib.request.urlopen(f"{url}/tile/0/000", timeout=10) as resp:
            tile = resp.read()
    finally:
        _stop(p)
    assert main(["ledger", "verify", "--data", str(m), "--store", dst, "--workers", "1"]) == 0
    assert "ledger OK" in capsys.readouterr().out
    assert main(["receipt", "dev1", "120", "--data", str(m), "--store", dst]) == 0
    (tmp_path / "r.json").write_text(capsys.readouterr().out)
    assert main(["verify-receipt", str(tmp_path / "r.json"), "--gateway-key", vkey,
                 "--device-key", devs[1].public_hex]) == 0
    capsys.readouterr()
    p, url = _start_serve(m, "--store", dst)
    try:
        with urllib.request.urlopen(f"{url}/tile/0/000", timeout=10) as resp:
            assert resp.read() == tile  # the PostgreSQL mirror serves the same bytes
        assert _mirror(url, tmp_path / "m2", vkey) == 0
    finally:
        _stop(p)
    assert main(["ledger", "verify", "--data", str(tmp_path / "m2"), "--workers", "1"]) == 0
    with Store.open(gw, readonly=True) as g, Store.open(tmp_path / "m2", readonly=True) as r:
        assert (r.entry_count(), r.reading_count()) == (g.entry_count(), g.reading_count())
