"""The ESP32 and RP2 board layers, run under the MicroPython Unix port against the stand-ins for
machine, network, esp32 and ntptime (tests/firmware/standins/), including Wi-Fi drops and NTP
failures. The cases themselves are in mp_board_cases.py; each prints a JSON object."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, run_mp

CASES = Path(__file__).with_name("mp_board_cases.py")
FLAVOURS = ["esp32", "rp2"]


def case(micropython: str, name: str, flavour: str, *extra: str) -> dict:
    p = run_mp(micropython, str(CASES), name, flavour, *extra, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_join_sets_clock_and_led(micropython: str, flavour: str) -> None:
    r = case(micropython, "join", flavour)
    assert r["online"] and r["joins"] == 1 and r["error"] is None
    assert r["ifconfig"] == "192.168.4.23"
    assert r["before"] is None, "clock must read as unset before the first NTP sync"
    assert abs(r["after"] - r["now"]) <= 2 and r["ntp"] == 1
    assert r["leds"] == [0, 1, 0]  # off at start, on while joining, off when online


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_join_failures_are_named(micropython: str, flavour: str) -> None:
    r = case(micropython, "join_errors", flavour)
    assert r["wrong"] == [False, "wrong_password"]
    assert r["noap"] == [False, "no_ap_found"]
    assert r["slow"] == [False, "timeout"]
    assert r["ok"] == [True, None]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_join_retries_with_growing_backoff(micropython: str, flavour: str) -> None:
    r = case(micropython, "backoff", flavour)
    assert r["online"] and r["joins"] == 5  # four failed joins, then success
    d = r["backoff"]
    assert len(d) == 4
    # equal jitter: attempt k sleeps in [base*2^k/2, base*2^k) with base 40 ms, capped at 320
    for k, ms in enumerate(d):
        cap = min(40 * 2**k, 320)
        assert cap // 2 <= ms < cap, (k, ms)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_wifi_drop_reconnects(micropython: str, flavour: str) -> None:
    r = case(micropython, "drop", flavour)
    assert r["first"] and not r["dropped"] and r["online"]
    # the status after losing the AP is the port's own code
    assert r["status"] == (r["beacon"] if flavour == "esp32" else r["fail"])
    assert r["joins"] >= 2 and r["backoff"], "joins failed while the AP was away, with backoff"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_keeper_rejoins_and_resyncs_by_itself(micropython: str, flavour: str) -> None:
    r = case(micropython, "keeper", flavour)
    assert r["joins_before"] == 1 and r["dropped"] is False
    assert r["online"] is True and r["joins_after"] == 2
    assert r["ntp_requests"] >= 1


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_ntp_failures_retry_then_resync(micropython: str, flavour: str) -> None:
    r = case(micropython, "ntp", flavour)
    # three timeouts: the clock stays unset (ts omitted) and the retry delay doubles
    assert r["tries"] == [[None, 0.1], [None, 0.2], [None, 0.4]]
    assert r["not_due"] is False and r["requests_before"] == 3  # no request before it is due
    assert r["synced"] is True and r["requests_after"] == 4
    assert abs(r["time"] - r["now"]) <= 2
    assert r["early"] == 0 and r["resynced"] == 1  # periodic re-sync after ntp_resync
    assert r["failures"] == 3 and r["syncs"] == 2


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_clock_epoch_converted_to_unix(micropython: str, flavour: str) -> None:
    r = case(micropython, "epoch", flavour)
    assert r["raw_before"] <= 2
    if flavour == "esp32":  # the ESP32 port counts from 2000-01-01
        assert r["epoch"] == 946684800
        assert abs(r["raw_after"] + 946684800 - r["now"]) <= 2
    else:
        assert r["epoch"] == 0 and abs(r["raw_after"] - r["now"]) <= 2
    assert abs(r["time"] - r["now"]) <= 2


def test_rp2_internal_temperature_formula(micropython: str) -> None:
    r = case(micropython, "temp", "rp2")
    for u16, data in r.items():
        v = int(u16) * 3.3 / 65535
        assert data["mcu_temp"] == pytest.approx(27 - (v - 0.706) / 0.001721, abs=0.006)


def test_esp32_internal_temperature_variants(micropython: str) -> None:
    r = case(micropython, "temp", "esp32")
    assert r["esp32s3@41"] == {"mcu_temp": 41}
    assert r["esp32c3@23.6"] == {"mcu_temp": 24}  # mcu_temperature() rounds to int degC
    # classic ESP32: raw_temperature() in degF (41 degC -> 105 degF) converted back
    assert r["esp32@41"] == {"mcu_temp": round((105 - 32) / 1.8, 1)}
    assert r["esp32@53.4"] == {}  # 128 degF: the value of chips without the sensor
    assert r["range"] == [{}, 1]


# Calibration words and raw values from the Bosch BMP280 datasheet's worked example (T and P
# use the same formulas in the BME280); humidity words are typical of a BME280.
CAL = {"T1": 27504, "T2": 26435, "T3": -1000, "P1": 36477, "P2": -10685, "P3": 3024,
       "P4": 2855, "P5": 140, "P6": -7, "P7": 15500, "P8": -14600, "P9": 6000,
       "H1": 75, "H2": 362, "H3": 0, "H4": 313, "H5": 50, "H6": 30}
RAW = [519888, 415148, 30123]


def float_reference(c: dict, adc_t: int, adc_p: int, adc_h: int) -> tuple[float, float, float]:
    """The datasheet's double-precision compensation (BME280 datasheet 8.1), written here
    independently of the firmware's integer version."""
    v1 = (adc_t / 16384.0 - c["T1"] / 1024.0) * c["T2"]
    v2 = (adc_t / 131072.0 - c["T1"] / 8192.0) ** 2 * c["T3"]
    t_fine = v1 + v2
    t = t_fine / 5120.0
    v1 = t_fine / 2.0 - 64000.0
    v2 = v1 * v1 * c["P6"] / 32768.0 + v1 * c["P5"] * 2.0
    v2 = v2 / 4.0 + c["P4"] * 65536.0
    v1 = (c["P3"] * v1 * v1 / 524288.0 + c["P2"] * v1) / 524288.0
    v1 = (1.0 + v1 / 32768.0) * c["P1"]
    p = 1048576.0 - adc_p
    p = (p - v2 / 4096.0) * 6250.0 / v1
    p = p + (c["P9"] * p * p / 2147483648.0 + p * c["P8"] / 32768.0 + c["P7"]) / 16.0
    h = t_fine - 76800.0
    h = (adc_h - (c["H4"] * 64.0 + c["H5"] / 16384.0 * h)) * (
        c["H2"] / 65536.0 * (1.0 + c["H6"] / 67108864.0 * h * (1.0 + c["H3"] / 67108864.0 * h)))
    h = h * (1.0 - c["H1"] * h / 524288.0)
    return t, p, min(max(h, 0.0), 100.0)


def test_bme280_matches_datasheet(micropython: str) -> None:
    r = case(micropython, "bme280", "esp32", json.dumps(CAL), json.dumps(RAW))
    t100, p256, h1024 = r["comp"]
    # the datasheet's worked example: 25.08 degC, 100653 Pa
    assert t100 == 2508
    assert p256 / 256 == pytest.approx(100653.27, abs=0.1)
    ft, fp, fh = float_reference(CAL, *RAW)
    assert ft == pytest.approx(25.08, abs=0.01)
    assert p256 / 256 == pytest.approx(fp, abs=1.0)
    assert h1024 / 1024 == pytest.approx(fh, abs=0.05)
    first = r["first"]
    assert first["temp"] == 25.08 and first["press"] == round(p256 / 25600, 2)
    assert first["hum"] == round(h1024 / 1024, 1) and first["mcu_temp"] == 41
    # a loose wire costs the BME280's values, not the reading; it is probed again later
    assert r["loose"] == {"mcu_temp": 41} and r["errors"] == 1
    assert r["again"] == first
    assert r["measurements"] == 2  # one forced measurement per reading
    regs = [reg for reg, _ in r["ctrl"]]
    assert regs[:2] == [0xE0, 0xF5] and [0xF2, [1]] in r["ctrl"] and [0xF4, [0x25]] in r["ctrl"]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_watchdog_fed_by_loop_and_bites_on_hang(micropython: str, flavour: str) -> None:
    r = case(micropython, "watchdog", flavour)
    assert r["timeout"] == (10000 if flavour == "esp32" else 8388)  # RP2 clamps to its maximum
    assert r["bites_while_fed"] == 0 and r["short_ok"] == 0
    assert r["hung"] is True and r["bites_after_hang"] == 1
    if flavour == "rp2":
        assert r["direct"] == "timeout exceeds 8388"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_default_device_id_is_unique_id_hex(micropython: str, flavour: str) -> None:
    r = case(micropython, "identity", flavour)
    assert r["default"] == bytes(r["uid"]).hex()
    assert r["configured"] == "greenhouse-7" and r["dir"] == "data"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_hold_file_stops_startup_before_the_watchdog(micropython: str, flavour: str,
                                                     tmp_path: Path) -> None:
    r = case(micropython, "hold", flavour, str(tmp_path))
    assert r == {"held": 0, "wdt": False, "joins": 0}


def test_config_file_overrides_defaults(micropython: str, tmp_path: Path) -> None:
    r = case(micropython, "config", "esp32", str(tmp_path / "anchor.json"))
    assert r["missing"] == 60
    assert r["loaded"] == [15, "lab", ["mcu", "bme280"], "mqtt://192.168.1.10:1883"]
    assert "unknown config key 'intervall'" in r['{"intervall": 5}']
    assert "'interval' has the wrong type" in r['{"interval": "5"}']
    assert "unknown sensor 'co2'" in r['{"sensors": ["co2"]}']
    assert "must hold a JSON object" in r["[1]"]
    assert "not valid JSON" in r["wifi=lab"]
    assert "'led_active_low' has the wrong type" in r['{"led_active_low": 1}']
    assert "interval must be > 0" in r['{"interval": 0}']
    # only non-default keys are written
    assert r["saved"] == {"interval": 30, "id": "dev-1", "wifi_ssid": "lab",
                          "sensors": ["mcu", "bme280"]}
    assert r["reloaded"] == 30


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_output_command_switches_the_configured_gpio_pins(micropython: str,
                                                          flavour: str) -> None:
    r = case(micropython, "outputs", flavour)
    assert r["fan_True"] == [1, None]
    assert r["pump_True"] == [1, 0]         # active low: on is 0
    assert r["fan_False"] == [0, 0] and r["pump_False"] == [0, 1]
    assert "no output heater" in r["unknown"]

