"""The console's JSON API and /metrics on the one HTTP server (in process, over a data
directory like `serve`): answers, paging, bad requests (clear 4xx, the server stays up,
nothing is written), the token, and no key material in any answer."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.cli.ledger import status
from gateway.console import queries
from gateway.fleet import registry
from gateway.http.access import TOKEN_COOKIE
from gateway.http.app import build_app
from gateway.http.context import HttpContext
from gateway.ingest.pipeline import Pipeline
from gateway.ledger import entry as E
from gateway.storage.store import DB_NAME, KEY_NAME, Store
from tests.helpers_readings import Device

TS0 = 1_700_000_000
N = 40  # readings per device, one every 10 s of device time
TOKEN = "console-test-token-0123456789"
KEY65 = Device("k").public_bytes


def make_data(tmp: Path, devices: int = 3) -> tuple[Path, str, list[Device]]:
    data = tmp / "data"
    store, vkey = Store.create(data)
    devs = [Device(f"d-{k:03d}") for k in range(devices)]
    for d in devs:
        registry.add(store, d.id, d.public_bytes)
    with Pipeline(store, processes=False, workers=1) as p:
        for d in devs:
            p.submit([(d.next({"t": 20 + k / 4, "h": k}, ts=TS0 + 10 * k), d.id)
                      for k in range(N)])
        p.submit([(b"garbage", devs[0].id), (b"\xd2more", devs[1].id)])
        # an equivocation: another message for a stored seq of d-000
        p.submit([(devs[0].message(5, bytes(32), {"t": 99.0}, ts=TS0 + 50), devs[0].id)])
        p.commit()
    registry.revoke(store, devs[2].id)
    store.close()
    return data, vkey, devs


Get = Callable[..., Awaitable[tuple[int, Any]]]


def dev_last_seen(data: Path, dev: str) -> int | None:
    """The time of the newest batch entry holding a reading of `dev`, from the ledger."""
    with Store.open(data, readonly=True) as st:
        seq = st.device(dev).last_seq  # type: ignore[union-attr]
        batch = st.console_reading_from(dev, seq)[1]  # type: ignore[arg-type,index]
        return st.console_entry_times([batch])[batch]


@contextlib.asynccontextmanager
async def serving(data: Path, token: str | None = None) -> AsyncIterator[tuple[str, Get]]:
    """The server over `data` on a free loopback port, as `serve` runs it; (url, get)."""
    ctx = HttpContext.for_data_dir(data)
    runner = web.AppRunner(build_app(ctx, token=token))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    session = aiohttp.ClientSession()

    async def get(path: str, **kw: Any) -> tuple[int, Any]:
        async with session.get(url + path, **kw) as r:
            body = await r.read()
            if r.content_type == "application/json":
                return r.status, json.loads(body)
            return r.status, body

    try:
        yield url, get
    finally:
        await session.close()
        await runner.cleanup()
        ctx.close()


def test_api_answers(tmp_path: Path) -> None:
    data, vkey, devs = make_data(tmp_path)
    asyncio.run(_api_answers(data, vkey, devs))


async def _api_answers(data: Path, vkey: str, devs: list[Device]) -> None:
    async with serving(data) as (_, get):
        code, o = await get("/api/overview")
        assert code == 200
        assert o["ledger"]["readings"] == 3 * N and o["ledger"]["devices"] == 3
        assert o["ledger"]["revoked"] == 1
        with Store.open(data, readonly=True) as st:
            assert o["ledger"]["rejected"] == status(st)["rejected"]
        assert sum(o["ledger"]["rejected"].values()) == 3
        assert o["ledger"]["rejected"]["equivocation"] == 1
        assert o["ledger"]["events"] == {"equivocation": 1}
        assert o["ledger"]["checkpoint"]["signatures"] == 1 and o["live"] is None
        assert "vkey" not in o  # the console shows no keys

        code, d = await get("/api/devices?sort=readings&desc=1")
        assert code == 200 and d["total"] == 3
        assert [r["id"] for r in d["devices"]] == ["d-000", "d-001", "d-002"]
        r0 = d["devices"][0]
        assert (r0["readings"], r0["last_seq"], r0["missing"], r0["today"]) == (N, N - 1, 0, N)
        assert r0["rejected_today"] == 2  # garbage on its topic, the equivocation
        assert r0["last_t"] is not None and dev_last_seen(data, "d-000") == r0["last_t"]
        code, d = await get("/api/devices?status=revoked")
        assert [r["id"] for r in d["devices"]] == ["d-002"]
        code, d = await get("/api/devices?q=001")
        assert [r["id"] for r in d["devices"]] == ["d-001"]
        code, d = await get("/api/devices?q=%25")  # a literal %, not a wildcard
        assert d["total"] == 0

        code, dev = await get("/api/devices/d-000")
        assert code == 200 and dev["readings"] == N and len(dev["latest"]) == queries.LATEST
        assert dev["latest"][0]["seq"] == N - 1 and dev["latest"][0]["ts"] == TS0 + 10 * (N - 1)
        assert [e["kind"] for e in dev["events"]] == ["equivocation"]
        assert len(dev["keys"]) == 1 and dev["keys"][0]["until_entry"] is None

        # the default range: the hour up to the newest reading (all 40 span 390 s)
        code, s = await get("/api/devices/d-001/series")
        assert code == 200 and s["count"] == N and s["seq"] == list(range(N))
        assert s["t"][0] == TS0 and s["sensors"]["h"] == list(range(N))
        code, s = await get(f"/api/devices/d-001/series?from={TS0 + 100}&to={TS0 + 200}")
        assert s["count"] == 11 and s["seq"] == list(range(10, 21))
        code, s = await get(f"/api/devices/d-001/series?from={TS0 + 101}&to={TS0 + 109}")
        assert s["count"] == 0

        code, rc = await get("/receipt/d-001/7")  # the log's route, linked from the pages
        assert code == 200 and rc["device"] == "d-001" and rc["seq"] == 7
        from gateway.ledger.receipt import verify_receipt
        verify_receipt(rc, vkey, devs[1].public_bytes)

        code, ev = await get("/api/events?limit=5")
        assert code == 200 and len(ev["events"]) == 1
        code, k = await get("/api/records")
        assert code == 200 and k == {"kinds": []}

        code, page = await get("/console/device?id=d-000")
        assert code == 200 and b"uPlot" in page
        code, js = await get("/console/static/vendor/uPlot.iife.min.js")
        assert code == 200, "run 'make setup' (tools/fetch-uplot) for the charting library"
        code, _ = await get("/")
        assert code == 200  # redirected to the overview

        code, m = await get("/metrics")
        fams = {f.name: f for f in text_string_to_metric_families(m.decode())}
        assert fams["iot_anchor_ledger_readings"].samples[0].value == 3 * N
        with Store.open(data, readonly=True) as st:
            assert {s.labels["reason"]: s.value
                    for s in fams["iot_anchor_ledger_refused"].samples} == status(st)["rejected"]


def test_devices_are_paged(tmp_path: Path) -> None:
    data, _, _ = make_data(tmp_path)
    with Store.open(data) as store:
        signer = store.load_signer()
        key = Device("x").public_bytes
        for k in range(3, 260):
            store.device_event(signer, f"d-{k:03d}", key, "add")
        seen: list[str] = []
        for offset in range(0, 300, 100):
            page = queries.devices(store, sort="id", desc=False, q="", status="",
                                   offset=offset, limit=100)
            assert page["total"] == 260
            seen += [r["id"] for r in page["devices"]]
        assert seen == [f"d-{k:03d}" for k in range(260)]
        top = queries.devices(store, sort="readings", desc=True, q="", status="active",
                              offset=0, limit=2)
        assert [r["readings"] for r in top["devices"]] == [N, N]
        last = queries.devices(store, sort="last_seen", desc=False, q="", status="",
                               offset=0, limit=3)
        assert all(r["last_t"] is None for r in last["devices"])  # no readings yet


def test_bad_requests_are_4xx_and_write_nothing(tmp_path: Path) -> None:
    data, _, _ = make_data(tmp_path)
    asyncio.run(_bad_requests(data))


async def _bad_requests(data: Path) -> None:
    before = hashlib.sha256((data / DB_NAME).read_bytes()).hexdigest()
    with Store.open(data, readonly=True) as st:
        st_before = status(st)
    bad = {
        "/nothing/here": 404,
        "/api/nothing": 404,
        "/api/devices?sort=password": 400,
        "/api/devices?limit=100000": 400,
        "/api/devices?offset=-1": 400,
        "/api/devices?offset=x": 400,
        "/api/devices?status=gone": 400,
        "/api/devices?q=" + "x" * 65: 400,
        "/api/devices/no-such-device": 404,
        "/api/devices/no-such-device/series": 404,
        "/api/devices/d-000/series?from=abc": 400,
        "/api/devices/d-000/series?from=-5": 400,
        "/api/devices/d-000/series?from=1e300": 400,
        f"/api/devices/d-000/series?from={TS0 + 100}&to={TS0}": 400,
        "/receipt/d-000/abc": 400,
        "/receipt/d-000/100000": 404,
        "/api/events?limit=0": 400,
        "/api/records/password": 400,
        "/api/records/dataset?limit=0": 400,
        "/console/nosuchpage": 404,
        "/console/static/../../storage/store.py": 404,
        "/console/static/%2e%2e/routes.py": 404,
    }
    async with serving(data) as (_, get):
        for path, want in bad.items():
            code, body = await get(path)
            assert code == want, (path, code, body)
            if path.startswith("/api/"):
                assert isinstance(body, dict) and body["error"], path
        # a range with more readings than one answer holds
        code, body = await get("/api/devices/d-000/series?from=0&to=99999999999")
        assert code == 200 and body["count"] == N
        old, queries.MAX_POINTS = queries.MAX_POINTS, 10
        try:
            code, body = await get("/api/devices/d-000/series?from=0&to=99999999999")
            assert code == 413 and "choose a shorter range" in body["error"]
        finally:
            queries.MAX_POINTS = old
        code, _ = await get("/api/overview")
        assert code == 200  # still up
    assert hashlib.sha256((data / DB_NAME).read_bytes()).hexdigest() == before
    with Store.open(data, readonly=True) as st:
        assert status(st) == st_before


def test_token_and_no_key_material(tmp_path: Path) -> None:
    data, _, devs = make_data(tmp_path)
    asyncio.run(_token_and_no_key_material(data, devs))


async def _token_and_no_key_material(data: Path, devs: list[Device]) -> None:
    private = (data / KEY_NAME).read_bytes()
    secrets = [d.public_hex for d in devs] + [private.decode().splitlines()[1]]
    async with serving(data, TOKEN) as (url, _), aiohttp.ClientSession() as s:
        for path in ("/api/overview", "/metrics", "/console/", "/api/devices"):
            async with s.get(url + path) as r:
                assert r.status == 401, path
        auth = {"Authorization": f"Bearer {TOKEN}"}
        paths = ["/api/overview", "/api/devices", "/metrics", "/api/events",
                 "/api/records"] + [f"/api/devices/{d.id}" for d in devs]
        for path in paths:
            async with s.get(url + path, headers=auth) as r:
                assert r.status == 200, path
                text = await r.text()
                for secret in secrets:
                    assert secret not in text, (path, secret[:16])
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            async with s.request(method, url + "/api/devices", headers=auth) as r:
                assert r.status == 405, method
        # a browser: the console's pages answer 401 with the sign-in page, which keeps the
        # token in a cookie; with the cookie, pages and API answer
        async with aiohttp.ClientSession() as s2:
            async with s2.get(url + "/console/devices") as r:
                assert r.status == 401 and "sign in" in await r.text()
            async with s2.get(url + "/api/overview", cookies={TOKEN_COOKIE: "wrong"}) as r:
                assert r.status == 401
            for path in ("/console/devices", "/api/overview", "/console/static/common.js"):
                async with s2.get(url + path, cookies={TOKEN_COOKIE: TOKEN}) as r:
                    assert r.status == 200, path


def test_records_listed_where_the_kinds_exist(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # a kind as the datasets feature declares it (in its own branch): listed generically
    monkeypatch.setitem(E.RECORD_KINDS, "dataset", E.RecordKind(
        frozenset({"name", "digest"}), frozenset(), max_size=1024))
    data, _, _ = make_data(tmp_path)
    with Store.open(data) as store:
        signer = store.load_signer()
        for k in range(3):
            store.append_record(signer, "dataset", {"name": f"set-{k}",
                                                     "digest": bytes([k]) * 32})
        assert queries.record_kinds(store) == ["dataset"]
        got = queries.records(store, "dataset", None, 2)
        assert [r["fields"]["name"] for r in got["records"]] == ["set-2", "set-1"]
        assert got["records"][0]["fields"]["digest"] == "02" * 32
        older = queries.records(store, "dataset", got["records"][-1]["i"], 50)
        assert [r["fields"]["name"] for r in older["records"]] == ["set-0"]
        # a public key in a record (a model's owner) is shown as its fingerprint only
        store.append_record(signer, "dataset", {"name": "keyed", "digest": KEY65})
        shown = queries.records(store, "dataset", None, 1)["records"][0]["fields"]
        assert shown["digest"] == "key " + queries.fingerprint(KEY65)


def test_gaps_are_listed_bounded(tmp_path: Path) -> None:
    data, _, devs = make_data(tmp_path)
    with Store.open(data) as store:
        d = Device("gappy")
        registry.add(store, d.id, d.public_bytes)
        msgs = [d.next({"t": 1.0}, ts=TS0 + k) for k in range(60)]
        keep = [m for k, m in enumerate(msgs) if k not in (0, 5, 6, 7, 30) and k < 50
                or k == 59]
        with Pipeline(store, processes=False, workers=1) as p:
            p.submit([(m, d.id) for m in keep])
            p.commit()
        dev = queries.device(store, d.id)
        assert dev["missing"] == 5 + 9  # 0, 5-7, 30, and 50-58
        assert dev["gaps"] == [[0, 0], [5, 7], [30, 30], [50, 58]]
        assert dev["gaps_checked_to"] is None
        gaps, short = store.console_gaps(d.id, -1, 59, max_gaps=2)
        assert gaps == [[0, 0], [5, 7]] and short == 8
