"""The operator console in a real browser, against a live gateway fed by real MicroPython
devices through Mosquitto: Debian's headless Chromium driven by Selenium through Debian's
chromedriver (nothing is downloaded at run time). Also /metrics, parsed by prometheus-client's
own parser, against `ledger status` after the run.

The gateway (`iot-anchor run --http 127.0.0.1:0`, sending its checkpoints to one witness,
`iot-anchor witness serve`) and the devices run once for the module; each test reads what they
left. Screenshots go to the module's temp directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.publish as mqtt_publish
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.sim.broker import PrivateBroker
from gateway.sim.simulate import MicroPythonFleet, stop_process_group
from gateway.storage.store import Store
from gateway.wire.cose import decode

pytestmark = [pytest.mark.mosquitto, pytest.mark.micropython]

ROOT = Path(__file__).resolve().parents[2]
DEVICES = 3
READINGS = 12  # per device
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


@dataclass
class Live:
    url: str
    data: Path
    vkey: str
    fleet: MicroPythonFleet
    tmp: Path
    gateway: subprocess.Popen[bytes]

    def status(self) -> dict[str, Any]:
        p = subprocess.run(cli("ledger", "status", "--json", "--data", str(self.data)),
                           capture_output=True, text=True, timeout=60, check=True)
        return json.loads(p.stdout)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, micropython: str) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("console")
    data = tmp / "data"
    store, vkey = Store.create(data)
    store.close()
    # a model version anchored (gateway/provenance, `model register`): a record kind the
    # console lists
    (tmp / "model").mkdir()
    (tmp / "model" / "weights.bin").write_bytes(b"\x01" * 64)
    subprocess.run(cli("model", "register", str(tmp / "model"), "--name", "console-model",
                       "--version", "1", "--out", str(tmp / "model.json"), "--data", str(data)),
                   capture_output=True, text=True, timeout=60, check=True,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
    fleet = MicroPythonFleet(tmp / "fleet", DEVICES, prefix="con")
    assert fleet.prepare(data) == DEVICES
    broker = PrivateBroker(workdir=tmp / "broker")
    broker.start()
    log = tmp / "gateway.log"
    gw = witness = None
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        wkey = tmp / "witness.key"
        p = subprocess.run(cli("witness", "init", "--key", str(wkey), "--name",
                               "witness.test/console"), capture_output=True, text=True,
                           timeout=60, env=env, check=True)
        wvkey = p.stdout.strip().splitlines()[-1]
        wlog = tmp / "witness.log"
        with open(wlog, "wb") as out:
            witness = subprocess.Popen(
                cli("witness", "serve", "--key", str(wkey), "--http", "127.0.0.1:0", "--data",
                    str(tmp / "witness"), "--log", vkey),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        wurl = _wait_for(wlog, witness, " serving on ")
        with open(log, "wb") as out:
            gw = subprocess.Popen(
                cli("run", "--data", str(data), "--broker", broker.url, "--batch-interval",
                    "0.2", "--http", "127.0.0.1:0", "--witness", f"{wurl}={wvkey}"),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                start_new_session=True, env=env)
        url = _wait_for(log, gw, "serving the log on ")
        _wait_for(log, gw, "connected to ")
        fleet.start(broker.url, 0.2, READINGS, ("--ack-timeout", "1.5", "--timeout", "40"))
        # one message the gateway must refuse (not COSE): a refusal by reason to count
        def refuse_one() -> None:
            mqtt_publish.single("anchor/con-0000/readings", b"not a reading", qos=1,
                                hostname="127.0.0.1", port=broker.port)

        refuse_one()
        fleet.wait(time.monotonic() + READINGS * 0.2 + 60)
        reports = fleet.reports()
        assert all(r.ok for r in reports), [(r.dev, r.note) for r in reports]
        lv = Live(url, data, vkey, fleet, tmp, gw)
        deadline = time.monotonic() + 20
        resent = time.monotonic()
        while (st := lv.status())["readings"] < DEVICES * READINGS or not st["rejected"]:
            assert time.monotonic() < deadline, st
            if not st["rejected"] and time.monotonic() - resent > 3:
                refuse_one()  # paho's single() can give up on a connect without raising
                resent = time.monotonic()
            time.sleep(0.2)
        # the witness has cosigned the newest checkpoint
        while b"iot_anchor_witness_status{witness=\"witness.test/console\"} 1.0" \
                not in lv.get("/metrics")[1]:
            assert time.monotonic() < deadline + 20, lv.get("/metrics")[1].decode()[-3000:]
            time.sleep(0.2)
        yield lv
    finally:
        fleet.stop()
        if gw is not None:
            gw.send_signal(signal.SIGTERM)
            try:
                gw.wait(20)
            finally:
                stop_process_group(gw, grace=0.5)
        if witness is not None:
            witness.terminate()
            witness.wait(10)
        broker.close()


def _wait_for(log: Path, proc: subprocess.Popen[bytes], marker: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        text = log.read_text(errors="replace")
        if marker in text:
            return text.split(marker, 1)[1].split()[0]
        assert proc.poll() is None, text
        assert time.monotonic() < deadline, f"no {marker!r} in the gateway log:\n{text}"
        time.sleep(0.05)


# --- /metrics -----------------------------------------------------------------------------


def test_metrics_parse_and_equal_ledger_status(live: Live) -> None:
    code, body = live.get("/metrics")
    assert code == 200
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    types = {}
    for fam in text_string_to_metric_families(body.decode()):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    st = live.status()
    assert types["iot_anchor_readings_anchored"] == "counter"
    assert samples[("iot_anchor_readings_anchored_total", ())] == st["readings"] \
        == DEVICES * READINGS
    refused = {dict(k[1])["reason"]: v for k, v in samples.items()
               if k[0] == "iot_anchor_readings_refused_total"}
    assert refused == st["rejected"] and sum(refused.values()) >= 1
    assert samples[("iot_anchor_ledger_readings", ())] == st["readings"]
    assert samples[("iot_anchor_ledger_size", ())] == st["entries"]
    assert {dict(k[1])["reason"]: v for k, v in samples.items()
            if k[0] == "iot_anchor_ledger_refused"} == st["rejected"]
    batches = samples[("iot_anchor_batches_total", ())]
    assert types["iot_anchor_batch_readings"] == "histogram"
    assert samples[("iot_anchor_batch_readings_count", ())] == batches >= 1
    assert samples[("iot_anchor_batch_readings_sum", ())] == st["readings"]
    assert samples[("iot_anchor_commit_seconds_count", ())] >= batches
    assert samples[("iot_anchor_broker_connected", ())] == 1
    assert samples[("iot_anchor_verify_queue_messages", ())] >= 0
    assert samples[("iot_anchor_acks_in_flight", ())] >= 0
    assert samples[("iot_anchor_witnesses", ())] == 1
    assert samples[("iot_anchor_witness_status", (("witness", "witness.test/console"),))] == 1
    assert samples[("iot_anchor_ledger_witnesses", ())] == 1
    assert samples[("iot_anchor_ledger_witness_state",
                    (("state", "ok"), ("witness", "witness.test/console")))] == 1
    assert samples[("process_resident_memory_bytes", ())] > 10e6
    assert samples[("iot_anchor_verifier_resident_memory_bytes", ())] > 10e6


# --- the browser --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(live: Live) -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("Debian's chromium and chromium-driver are missing: run 'make setup' "
                    "(or apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = live.tmp / "chromium-profile"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
              "--window-size=1400,1100", f"--user-data-dir={profile}",
              "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver: Any, js: str, timeout: float = 15) -> Any:
    """Poll a JS expression until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        v = driver.execute_script("return " + js)
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {js}"
        time.sleep(0.1)


def _no_console_errors(driver: Any) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors


def test_overview_shows_the_ledger(live: Live, browser: Any) -> None:
    browser.get(live.url + "/console/")
    want = f"{DEVICES * READINGS:,}"
    _wait(browser, f"document.querySelector('#c-readings .v')?.textContent === '{want}'")
    _wait(browser, "document.querySelector('#c-broker .v')?.textContent === 'connected'")
    # the witness's cosignature of the newest checkpoint, and its state
    _wait(browser, "document.querySelector('#c-cosig .v')?.textContent === '1'")
    assert "witness witness.test/console" in browser.page_source
    _wait(browser, "document.querySelector('#plot-rate canvas') !== null")
    assert "not a reading" not in browser.page_source
    browser.save_screenshot(str(live.tmp / "overview.png"))
    _no_console_errors(browser)
    # the records page: the model version registered before the run
    browser.get(live.url + "/console/records")
    _wait(browser, "document.querySelector('[data-kind=model]') !== null")
    assert "console-model" in browser.find_element("css selector", "[data-kind=model]").text
    assert browser.execute_script("return document.querySelectorAll('[data-kind]').length") == 1
    browser.save_screenshot(str(live.tmp / "records.png"))
    _no_console_errors(browser)


def test_device_table_lists_every_device(live: Live, browser: Any) -> None:
    browser.get(live.url + "/console/devices")
    _wait(browser, "document.querySelectorAll('#devices tbody tr[data-device]').length > 0")
    shown = browser.execute_script(
        "return [...document.querySelectorAll('#devices tbody tr')].map(r => r.dataset.device)")
    assert sorted(shown) == sorted(live.status()["devices"])
    # sorting by readings today, descending, and filtering keep working
    browser.find_element("css selector", "th[data-sort=today]").click()
    _wait(browser, "document.querySelector('th[data-sort=today]').classList.contains('on')")
    browser.find_element("id", "q").send_keys("0001")
    _wait(browser, "document.querySelectorAll('#devices tbody tr').length === 1")
    assert browser.execute_script(
        "return document.querySelector('#devices tbody tr').dataset.device") == "con-0001"
    browser.save_screenshot(str(live.tmp / "devices.png"))
    _no_console_errors(browser)


def test_device_plot_has_every_reading_in_range(live: Live, browser: Any) -> None:
    dev = "con-0002"
    n = live.status()["devices"][dev]["readings"]
    assert n == READINGS
    browser.get(live.url + f"/console/device?id={dev}")
    _wait(browser, "document.getElementById('plots').dataset.points !== undefined")
    browser.find_element("css selector", "#ranges button[data-span=all]").click()
    points = _wait(browser, "document.querySelectorAll('#plots .plot canvas').length > 0 && "
                            "document.getElementById('plots').dataset.points")
    assert int(points) == n
    per_plot = browser.execute_script(
        "return [...document.querySelectorAll('#plots .plot')].map(p => +p.dataset.points)")
    assert per_plot and all(p == n for p in per_plot)
    rows = browser.execute_script("return document.querySelectorAll('#latest tbody tr').length")
    assert rows == min(n, 20)
    # a UTC range over the middle of its readings: the plots hold exactly the readings whose
    # time the ledger puts in it (device clock, whole seconds)
    with Store.open(live.data, readonly=True) as st:
        times = [decode(c).ts for _, _, c in st.console_readings(dev, 0, 1 << 62, 1000)]
    assert len(times) == n and all(t is not None for t in times)
    # from the second distinct second to the last but one: readings on either side are left out
    # (several readings may share a second on a busy machine)
    seconds = sorted(set(times))  # type: ignore[type-var]
    assert len(seconds) >= 3, f"the device's readings span only {len(seconds)} seconds"
    lo, hi = seconds[1], seconds[-2]
    want = sum(1 for t in times if lo <= t <= hi)  # type: ignore[operator]
    assert 0 < want < n
    browser.execute_script(
        "document.getElementById('from').value = arguments[0];"
        "document.getElementById('to').value = arguments[1];"
        "document.getElementById('plots').dataset.points = '';",
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(lo)),
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(hi)))
    browser.find_element("id", "apply").click()
    got = _wait(browser, "document.getElementById('plots').dataset.points")
    assert int(got) == want
    assert browser.execute_script(
        "return [...document.querySelectorAll('#plots .plot')].map(p => +p.dataset.points)"
    ) == [want] * len(per_plot)
    browser.save_screenshot(str(live.tmp / "device.png"))
    _no_console_errors(browser)


def test_receipt_checked_in_the_page(live: Live, browser: Any) -> None:
    dev, seq = "con-0001", 3
    browser.get(live.url + f"/console/receipts?dev={dev}&seq={seq}")
    text = _wait(browser, "document.getElementById('receipt').value")
    receipt = json.loads(text)
    assert receipt["device"] == dev and receipt["seq"] == seq
    key = (live.fleet.fleet_dir / f"{dev}.pub").read_text().strip()
    browser.find_element("id", "vkey").send_keys(live.vkey)
    browser.find_element("id", "devkey").send_keys(key)

    def check(r: dict[str, Any]) -> tuple[str, str, str]:
        browser.execute_script(
            "document.getElementById('result').dataset.result = '';"
            "document.getElementById('receipt').value = arguments[0]", json.dumps(r))
        browser.find_element("id", "check").click()
        res = _wait(browser, "document.getElementById('result').dataset.result")
        return (res, browser.execute_script(
            "return document.getElementById('result').dataset.step || ''"),
            browser.find_element("id", "result").text)

    res, _, said = check(receipt)
    assert res == "valid" and "signed by the device key" in said, said
    browser.save_screenshot(str(live.tmp / "receipt-valid.png"))

    # a reading changed by one byte: it is no longer the leaf the batch proof leads from
    cose = receipt["reading"]["cose"]
    k = len(cose) - 140  # inside the payload's data
    tampered = json.loads(json.dumps(receipt))
    tampered["reading"]["cose"] = cose[:k] + ("0" if cose[k] != "0" else "1") + cose[k + 1:]
    res, step, said = check(tampered)
    assert (res, step) == ("invalid", "3") and "reading in the batch tree" in said, said
    browser.save_screenshot(str(live.tmp / "receipt-tampered.png"))

    # the checkpoint's root changed: its signature no longer holds
    lines = receipt["checkpoint"].split("\n")
    lines[2] = ("A" if lines[2][0] != "A" else "B") + lines[2][1:]
    res, step, said = check(dict(receipt, checkpoint="\n".join(lines)))
    assert (res, step) == ("invalid", "1") and "checkpoint signature" in said, said

    # another gateway's vkey
    other = Store.create(live.tmp / "other")
    other[0].close()
    browser.find_element("id", "vkey").clear()
    browser.find_element("id", "vkey").send_keys(other[1])
    res, step, said = check(receipt)
    assert (res, step) == ("invalid", "1"), said

    # the right gateway, the wrong device key: the device signature fails
    browser.find_element("id", "vkey").clear()
    browser.find_element("id", "vkey").send_keys(live.vkey)
    browser.find_element("id", "devkey").clear()
    browser.find_element("id", "devkey").send_keys(
        (live.fleet.fleet_dir / "con-0000.pub").read_text().strip())
    res, step, said = check(receipt)
    assert (res, step) == ("invalid", "5") and "device signature" in said, said
    _no_console_errors(browser)


def test_sign_in_with_the_token(live: Live, browser: Any) -> None:
    """`serve` with a token: the console's page answers 401 with the sign-in page; after the
    token is entered, the pages and their API calls carry it (the cookie)."""
    token_file = live.tmp / "http.token"
    token_file.write_text("s3cret-console-token\n")
    serve = subprocess.Popen(
        cli("serve", "--data", str(live.data), "--http", "127.0.0.1:0", "--http-token-file",
            str(token_file)), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert serve.stdout is not None
        url = serve.stdout.readline().split(" on ", 1)[1].strip()
        browser.get(url + "/console/devices")
        _wait(browser, "document.getElementById('token') !== null")
        assert "sign in" in browser.page_source
        browser.get_log("browser")  # the 401 of the page itself is logged: not a page error
        browser.find_element("id", "token").send_keys("s3cret-console-token\n")
        _wait(browser, "document.querySelectorAll('#devices tbody tr[data-device]').length "
                       f"=== {DEVICES}")
        browser.save_screenshot(str(live.tmp / "signed-in.png"))
        _no_console_errors(browser)
        browser.delete_all_cookies()
    finally:
        serve.terminate()
        serve.wait(10)
