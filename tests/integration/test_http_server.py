"""The one HTTP server: `serve` over a data directory, access rules, `run --http` options."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from gateway.cli import main
from gateway.fleet import registry
from gateway.ledger import note
from gateway.storage.store import Store
from tests.helpers_readings import Device

TOKEN = "0123456789abcdef-test-token"


def _data(tmp_path: Path) -> tuple[Path, str]:
    store, vkey = Store.create(tmp_path / "d")
    registry.add(store, "dev-a", Device("dev-a").public_bytes)
    store.close()
    return tmp_path / "d", vkey


def _start_serve(data: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    p = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--data", str(data),
                          "--http", "127.0.0.1:0", *extra], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line.startswith("serving "):
        p.kill()
        raise AssertionError(f"serve did not start: {line!r} {p.communicate()[1]!r}")
    return p, line.split(" on ", 1)[1].strip()


def _stop(p: subprocess.Popen[str]) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()


async def _get(url: str, method: str = "GET", **kw: object) -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession() as s, s.request(method, url, **kw) as r:  # type: ignore[arg-type]
        return r.status, await r.read(), dict(r.headers)


def test_serve_checkpoint_token_and_read_only(tmp_path: Path) -> None:
    import asyncio

    data, vkey = _data(tmp_path)
    tf = tmp_path / "token"
    tf.write_text(TOKEN + "\n")
    p, url = _start_serve(data, "--http-token-file", str(tf))
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        status, body, headers = asyncio.run(_get(url + "/checkpoint", headers=auth))
        assert status == 200 and headers["Content-Type"] == "text/plain; charset=utf-8"
        cp = note.verify_checkpoint(body.decode(), vkey)
        assert cp.size == 1
        # no token, a wrong one: 401; a write: 405; an unknown path: 404
        assert asyncio.run(_get(url + "/checkpoint"))[0] == 401
        assert asyncio.run(_get(url + "/checkpoint",
                                headers={"Authorization": "Bearer wrong"}))[0] == 401
        assert asyncio.run(_get(url + "/checkpoint", "POST", headers=auth, data=b"x"))[0] == 405
        assert asyncio.run(_get(url + "/checkpoint", "DELETE", headers=auth))[0] == 405
        assert asyncio.run(_get(url + "/nothing", headers=auth))[0] == 404
        # the server is unharmed
        assert asyncio.run(_get(url + "/checkpoint", "HEAD", headers=auth))[0] == 200
    finally:
        _stop(p)


def test_http_address_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = _data(tmp_path)
    # any address that is not loopback needs a token
    assert main(["serve", "--data", str(data), "--http", "0.0.0.0:0"]) == 2
    assert "not a loopback address and no token" in capsys.readouterr().err
    assert main(["run", "--data", str(data), "--http", "0.0.0.0:0"]) == 2
    assert "not a loopback address and no token" in capsys.readouterr().err
    assert main(["serve", "--data", str(data), "--http", "127.0.0.1:99999"]) == 2
    assert "no valid port" in capsys.readouterr().err
    assert main(["serve", "--data", str(data), "--http-token", "short"]) == 2
    assert "16 to 4096" in capsys.readouterr().err
    assert main(["run", "--data", str(data), "--http-token", TOKEN]) == 2
    assert "need --http" in capsys.readouterr().err
