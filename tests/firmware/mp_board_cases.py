# Board-layer cases run under the MicroPython Unix port with the stand-ins for machine, network,
# esp32 and ntptime (tests/firmware/standins/). Usage:
#   micropython tests/firmware/mp_board_cases.py CASE FLAVOUR
# Each case prints one JSON object on its last line; test_board_layers.py checks it.
import json
import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path[:0] = [_here + "/standins", _here + "/../../firmware"]

import asyncio  # noqa: E402
import time  # noqa: E402

import esp32  # noqa: E402
import machine  # noqa: E402
import network  # noqa: E402
import ntptime  # noqa: E402
from anchor import config  # noqa: E402

CASE = sys.argv[1]
FLAVOUR = sys.argv[2] if len(sys.argv) > 2 else "esp32"


def make_board(**over):
    variant = over.pop("variant", None)
    machine.sim.flavour("rp2" if FLAVOUR == "rp2" else "esp32")
    network.sim.flavour("rp2" if FLAVOUR == "rp2" else "esp32")
    if variant:
        esp32.sim.variant(variant)
    cfg = {"wifi_ssid": "anchor-lab", "wifi_password": "correct horse", "ntp_resync": 3600}
    cfg.update(over)
    cfg = config.merge(cfg)
    if FLAVOUR == "rp2":
        from anchor.board_rp2 import Board
    else:
        from anchor.board_esp32 import Board
    b = Board(cfg)
    # The board's RTC is the stand-in's (unset at power-on, set by ntptime.settime()); on a real
    # board the same value is what time.time() returns.
    b.port_time = machine.sim.rtc_seconds
    b.EPOCH = 946684800 if FLAVOUR == "esp32" else 0  # the real port's epoch (2000 / 1970)
    b.join_timeout_ms = 300
    b.backoff_min_ms = 40
    b.backoff_max_ms = 320
    b.ntp_retry_min_s = 0.05
    return b


def run(coro):
    return asyncio.run(coro)


def done(**out):
    print(json.dumps(out))


def case_join():
    b = make_board(led=2)
    before = b.time()
    t0 = time.ticks_ms()
    run(b.network_up())
    done(online=b.online(), joins=b.wifi_joins, error=b.wifi_error, before=before,
         after=b.time(), now=int(time.time()), ms=time.ticks_diff(time.ticks_ms(), t0),
         ntp=ntptime.sim.requests, leds=[v for p, v in machine.sim.pin_log if p == 2],
         ifconfig=b.wlan.ifconfig()[0])


def case_join_errors():
    b = make_board()
    out = {}
    b.cfg["wifi_password"] = "wrong"
    out["wrong"] = [run(b.join_once()), b.wifi_error]
    b.cfg["wifi_ssid"] = "elsewhere"
    out["noap"] = [run(b.join_once()), b.wifi_error]
    b.cfg["wifi_ssid"] = "anchor-lab"
    b.cfg["wifi_password"] = "correct horse"
    network.sim.join_ms = 10000  # longer than the join timeout
    out["slow"] = [run(b.join_once()), b.wifi_error]
    network.sim.join_ms = 30
    out["ok"] = [run(b.join_once()), b.wifi_error]
    done(**out)


def case_backoff():
    b = make_board()
    network.sim.fail_joins = 4
    t0 = time.ticks_ms()
    run(b.network_up())
    done(online=b.online(), joins=b.wifi_joins, backoff=b.backoff_log,
         ms=time.ticks_diff(time.ticks_ms(), t0))


def case_drop():
    b = make_board()
    run(b.network_up())
    first = b.online()
    network.sim.drop()
    dropped = b.online()
    status = b.wlan.status()
    network.sim.ap_up = False  # the access point stays away for a while

    async def restore():
        await asyncio.sleep_ms(250)
        network.sim.ap_up = True

    async def both():
        asyncio.create_task(restore())
        await b.network_up()

    run(both())
    done(first=first, dropped=dropped, status=status, beacon=getattr(
        network, "STAT_BEACON_TIMEOUT", None), fail=network.STAT_CONNECT_FAIL, online=b.online(),
        joins=b.wifi_joins, backoff=b.backoff_log)


def case_keeper():
    """After the first network_up(), the keeper task alone rejoins after a drop and re-syncs
    the clock when due; the device loop does not have to call anything."""
    b = make_board(ntp_resync=1)
    b.keeper_ms = 100
    out = {}

    async def go():
        await b.network_up()
        out["joins_before"] = b.wifi_joins
        ntp0 = ntptime.sim.requests
        network.sim.drop()
        out["dropped"] = b.online()
        await asyncio.sleep_ms(1300)  # > keeper_ms + join_ms, and > ntp_resync (1 s)
        out["online"] = b.online()
        out["joins_after"] = b.wifi_joins
        out["ntp_requests"] = ntptime.sim.requests - ntp0

    run(go())
    done(**out)


def case_ntp():
    b = make_board(ntp_resync=1)
    ntptime.sim.fail_next = 3
    run(b.network_up())  # Wi-Fi up; the first NTP attempt fails
    out = {"tries": [[b.time(), b.ntp_retry]]}
    for _ in range(2):
        b.sync_clock(force=True)
        out["tries"].append([b.time(), b.ntp_retry])
    not_due = b.sync_clock()  # next attempt not due yet: no request
    out["requests_before"] = ntptime.sim.requests
    time.sleep_ms(int(b.ntp_retry * 1000) + 20)
    out["synced"] = b.sync_clock()
    out["time"] = b.time()
    out["now"] = int(time.time())
    out["requests_after"] = ntptime.sim.requests
    out["not_due"] = not_due
    # periodic re-sync: not before ntp_resync (1 s), then one request
    r0 = ntptime.sim.requests
    b.sync_clock()
    out["early"] = ntptime.sim.requests - r0
    time.sleep_ms(1050)
    b.sync_clock()
    out["resynced"] = ntptime.sim.requests - r0
    out["failures"] = b.ntp_failures
    out["syncs"] = b.ntp_syncs
    done(**out)


def case_epoch():
    b = make_board()
    raw_before = b.port_time()
    run(b.network_up())
    done(raw_before=raw_before, raw_after=b.port_time(), time=b.time(), now=int(time.time()),
         epoch=b.EPOCH)


def case_temp():
    out = {}
    if FLAVOUR == "rp2":
        for u16 in (14100, 13000, 15500):
            machine.sim.adc[4] = u16
            b = make_board()
            out[str(u16)] = b.read_sensors()
    else:
        for variant, temp in (("esp32s3", 41), ("esp32c3", 23.6), ("esp32", 41),
                              ("esp32", 53.4)):
            esp32.sim.temp_c = temp
            b = make_board(variant=variant)
            out[f"{variant}@{temp}"] = b.read_sensors()
        esp32.sim.temp_c = 95  # outside the S3 sensor's configured range
        b = make_board(variant="esp32s3")
        out["range"] = [b.read_sensors(), b.sensor_errors]
    done(**out)


def case_bme280():
    import sim_bme280

    cal = json.loads(sys.argv[3])
    raw = json.loads(sys.argv[4])
    dev = sim_bme280.BME280(cal, raw[0], raw[1], raw[2])
    machine.sim.i2c = {0x77: dev}
    b = make_board(sensors=["mcu", "bme280"], bme280_addr=0x77, scl=5, sda=4, variant="esp32s3")
    first = b.read_sensors()
    comp = b.bme.compensate(*raw)
    machine.sim.i2c = {}  # the wire comes loose
    loose = b.read_sensors()
    errors = b.sensor_errors
    machine.sim.i2c = {0x77: dev}  # and is fixed
    again = b.read_sensors()
    done(first=first, comp=list(comp), loose=loose, errors=errors, again=again,
         measurements=dev.measurements, ctrl=[[r, list(v)] for r, v in dev.writes])


def case_watchdog():
    b = make_board(watchdog_ms=10000)
    b.start_watchdog()
    timeout = machine.sim.wdt.timeout
    run(b.sleep_fed(600))
    fed_ok = machine.sim.wdt_bites
    out = {"timeout": timeout, "bites_while_fed": fed_ok}
    if FLAVOUR == "rp2":
        try:
            machine.WDT(timeout=9000)
            out["direct"] = "accepted"
        except ValueError as e:
            out["direct"] = str(e)
    b2 = make_board(watchdog_ms=400)
    b2.start_watchdog()
    run(b2.sleep_fed(1000))
    out["short_ok"] = machine.sim.wdt_bites
    time.sleep_ms(500)  # the main loop hangs: no feed within 400 ms
    out["hung"] = machine.sim.check_wdt()
    b2.feed()
    out["bites_after_hang"] = machine.sim.wdt_bites
    done(**out)


def case_identity():
    b = make_board()
    b2 = make_board(id="greenhouse-7")
    done(default=b.device_id(), configured=b2.device_id(), uid=list(machine.unique_id()),
         dir=b.data_dir())


def case_hold():
    """With anchor.hold at the root, start-up returns before it arms the watchdog."""
    from anchor import startup

    root = sys.argv[3] + "/"
    with open(root + "anchor.json", "w") as f:
        f.write(json.dumps({"board": FLAVOUR, "watchdog_ms": 5000}))
    with open(root + "anchor.hold", "w") as f:
        f.write("")
    machine.sim.flavour(FLAVOUR)
    held = startup.main(root)
    done(held=held, wdt=machine.sim.wdt is not None, joins=network.sim.joins)


def case_config():
    path = sys.argv[3]
    out = {"missing": config.load(path + ".none")["interval"]}
    with open(path, "w") as f:
        f.write('{"interval": 15, "wifi_ssid": "lab", "sensors": ["mcu", "bme280"]}')
    c = config.load(path)
    out["loaded"] = [c["interval"], c["wifi_ssid"], c["sensors"], c["broker"]]
    for bad in ('{"intervall": 5}', '{"interval": "5"}', '{"sensors": ["co2"]}', "[1]", "wifi=lab",
                '{"led_active_low": 1}', '{"interval": 0}'):
        with open(path, "w") as f:
            f.write(bad)
        try:
            config.load(path)
            out[bad] = "accepted"
        except ValueError as e:
            out[bad] = str(e)
    c["interval"] = 30
    c["id"] = "dev-1"
    config.save(c, path)
    with open(path) as f:
        out["saved"] = json.loads(f.read())
    out["reloaded"] = config.load(path)["interval"]
    done(**out)


def case_outputs():
    """The `output` command on a board: the GPIO pins of the config key "outputs"."""
    from anchor import downlink_cmd

    b = make_board(outputs={"fan": 5, "pump": {"pin": 6, "active_low": True}})

    class Loop:     # what set_output uses of a device.Loop
        board = b

    out = {}
    for name, on in (("fan", True), ("pump", True), ("fan", False), ("pump", False)):
        downlink_cmd.set_output(Loop, name, on)
        out[name + "_" + str(on)] = [machine.sim.pins.get(5), machine.sim.pins.get(6)]
    try:
        downlink_cmd.set_output(Loop, "heater", True)
        out["unknown"] = "accepted"
    except ValueError as e:
        out["unknown"] = str(e)
    done(**out)


globals()["case_" + CASE]()
