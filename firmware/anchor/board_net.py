# Shared part of the ESP32 and RP2 board layers: Wi-Fi station with retries and backoff, the
# clock from NTP with periodic re-sync, the hardware watchdog, the status LED, the optional
# BME280, the default device id. board_esp32.py / board_rp2.py add what differs: the internal
# temperature sensor, the port's clock epoch, the watchdog's limit. Imported only on boards
# (and in tests, with the stand-ins from tests/firmware/standins/ on sys.path).
import asyncio
import time

import machine
import network
from micropython import const

_PLAUSIBLE = const(1735689600)  # 2025-01-01: a clock reading before this is "not set yet"
_JOIN_TIMEOUT_MS = const(20000)  # one Wi-Fi join attempt
_BACKOFF_MIN_MS = const(1000)
_BACKOFF_MAX_MS = const(60000)
_NTP_RETRY_MIN_S = const(4)
_KEEPER_MS = const(2000)  # how often the keeper checks the link

# Seconds from 1970 to the port's epoch: 2000-01-01 on ESP32 (time.gmtime(0)[0] == 2000),
# 1970 on RP2, as the MicroPython docs say to find out.
_EPOCH = 946684800 if time.gmtime(0)[0] == 2000 else 0


def _status_name(st):
    for name in ("STAT_WRONG_PASSWORD", "STAT_NO_AP_FOUND", "STAT_CONNECT_FAIL",
                 "STAT_BEACON_TIMEOUT", "STAT_IDLE", "STAT_CONNECTING", "STAT_GOT_IP"):
        if getattr(network, name, None) == st:
            return name[5:].lower()
    return "status %s" % st


class NetBoard:
    """A Wi-Fi board implementing the interface documented in board_unix.py. Subclasses set
    `name`, `WDT_MAX_MS` and implement `_mcu_temp()` (degrees C, or None when the chip offers
    none). `EPOCH` is the seconds from 1970 to the port's epoch (tests set it to model a port)."""

    name = "mcu"
    EPOCH = _EPOCH
    WDT_MAX_MS = 0  # 0 = no limit

    def __init__(self, cfg):
        self.cfg = cfg
        self.wlan = network.WLAN(network.STA_IF)
        self.wifi_error = None  # last join failure, e.g. "wrong_password"
        self.wifi_joins = 0
        # timings (tests shorten them)
        self.join_timeout_ms = _JOIN_TIMEOUT_MS
        self.backoff_min_ms = _BACKOFF_MIN_MS
        self.backoff_max_ms = _BACKOFF_MAX_MS
        self.ntp_retry_min_s = _NTP_RETRY_MIN_S
        self.keeper_ms = _KEEPER_MS
        self._backoff = _BACKOFF_MIN_MS
        self.backoff_log = []  # delays slept between failed joins, last 8
        self._synced = False
        self._next_sync = 0  # ticks_ms deadline for the next NTP attempt
        self.ntp_retry = 0  # next retry delay in s after a failure; 0 = ntp_retry_min_s
        self.ntp_failures = 0
        self.ntp_syncs = 0
        self._wdt = None
        self._wdt_ms = 0
        self._led = None
        self.bme = None  # the BME280 driver once probed, None until then or after a failure
        self.sensor_errors = 0
        self._keeper = None
        led = cfg.get("led")
        if led is not None:
            self._led = machine.Pin(led, machine.Pin.OUT)
            self.led(False)

    # -- identity and storage ------------------------------------------------------------

    def device_id(self):
        return self.cfg.get("id") or _hex(machine.unique_id())

    def data_dir(self):
        return self.cfg["dir"]

    # -- clock -----------------------------------------------------------------------------

    def port_time(self):
        """The port's clock, seconds from its epoch (EPOCH): time.time()."""
        return time.time()

    def time(self):
        """Unix seconds, or None while the clock has not been set (no NTP sync yet and the RTC
        reads before 2025: it starts at the port's epoch on power-up)."""
        t = int(self.port_time()) + self.EPOCH
        if self._synced or t >= _PLAUSIBLE:
            return t
        return None

    def sync_clock(self, force=False):
        """Set the RTC from NTP when due. Blocking for at most ntptime.timeout seconds.
        On failure retry after a growing delay (4 s, 8 s, ... up to ntp_resync)."""
        now = time.ticks_ms()
        if not force and time.ticks_diff(now, self._next_sync) < 0:
            return self._synced
        import ntptime

        ntptime.host = self.cfg["ntp_host"]
        self.feed()
        try:
            ntptime.settime()
        except (OSError, OverflowError, IndexError):  # timeout, DNS failure, short reply
            self.ntp_failures += 1
            r = self.ntp_retry or self.ntp_retry_min_s
            self._next_sync = time.ticks_add(now, int(r * 1000))
            self.ntp_retry = min(r * 2, self.cfg["ntp_resync"])
            return self._synced
        self._synced = True
        self.ntp_syncs += 1
        self.ntp_retry = 0
        self._next_sync = time.ticks_add(now, int(self.cfg["ntp_resync"] * 1000))
        return True

    # -- Wi-Fi -----------------------------------------------------------------------------

    def online(self):
        return self.wlan.isconnected()

    async def join_once(self, timeout_ms=None):
        """One join attempt. True when connected; else sets wifi_error and returns False."""
        w = self.wlan
        timeout_ms = timeout_ms or self.join_timeout_ms
        if w.isconnected():
            return True
        w.active(True)
        self.wifi_joins += 1
        try:
            w.connect(self.cfg["wifi_ssid"], self.cfg["wifi_password"])
        except OSError as e:
            self.wifi_error = "connect failed: %s" % e
            return False
        t0 = time.ticks_ms()
        st = None
        while time.ticks_diff(time.ticks_ms(), t0) < timeout_ms:
            if w.isconnected():
                self.wifi_error = None
                return True
            st = w.status()
            if st in _failures():
                break
            self.feed()
            await asyncio.sleep_ms(50)
        self.wifi_error = "timeout" if st is None or st == getattr(
            network, "STAT_CONNECTING", None) else _status_name(st)
        w.disconnect()
        return False

    async def network_up(self):
        """Return once Wi-Fi is connected (and the clock synced when due). Retries forever,
        with exponential backoff and jitter between attempts (1 s doubling to 60 s). The first
        call also starts the keeper task, which rejoins after a drop and re-syncs the clock."""
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep())
        await self._join()

    async def _keep(self):
        while True:
            await asyncio.sleep_ms(self.keeper_ms)
            await self._join()

    async def _join(self):
        if not self.wlan.isconnected():
            self.led(True)
            self._backoff = self.backoff_min_ms
            while not await self.join_once():
                delay = self._backoff // 2 + _jitter(self._backoff // 2)
                self.backoff_log = self.backoff_log[-7:] + [delay]
                self._backoff = min(self._backoff * 2, self.backoff_max_ms)
                await self.sleep_fed(delay)
            self.led(False)
        self.sync_clock()

    async def sleep_fed(self, ms):
        """Sleep `ms`, feeding the watchdog meanwhile (only while the main loop is alive)."""
        step = min(1000, self._wdt_ms // 3) if self._wdt_ms else 1000
        while ms > 0:
            self.feed()
            d = step if ms > step else ms
            await asyncio.sleep_ms(d)
            ms -= d
        self.feed()

    # -- watchdog and LED ------------------------------------------------------------------

    def start_watchdog(self):
        ms = self.cfg["watchdog_ms"]
        if ms and self._wdt is None:
            if self.WDT_MAX_MS and ms > self.WDT_MAX_MS:
                ms = self.WDT_MAX_MS
            self._wdt = machine.WDT(timeout=ms)
            self._wdt_ms = ms

    def feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    def led(self, on):
        if self._led is not None:
            self._led.value((not on) if self.cfg["led_active_low"] else bool(on))

    # -- sensors ---------------------------------------------------------------------------

    def _bme280(self):
        if self.bme is None:
            from anchor.bme280 import BME280

            c = self.cfg
            kw = {}
            if c["scl"] is not None:
                kw["scl"] = machine.Pin(c["scl"])
            if c["sda"] is not None:
                kw["sda"] = machine.Pin(c["sda"])
            self.bme = BME280(machine.I2C(c["i2c"], **kw), c["bme280_addr"])
        return self.bme

    def read_sensors(self):
        """A dict sensor name -> number. A sensor that fails is left out (and counted), so a
        loose I2C wire costs its values, not the reading."""
        data = {}
        sensors = self.cfg["sensors"]
        if "mcu" in sensors:
            t = self._mcu_temp()
            if t is not None:
                data["mcu_temp"] = t
        if "bme280" in sensors:
            try:
                t, p, h = self._bme280().read()
                data["temp"] = t
                data["press"] = p
                data["hum"] = h
            except OSError:
                self.bme = None  # probe again next time
                self.sensor_errors += 1
        return data

    def _mcu_temp(self):
        return None


def _failures():
    return tuple(getattr(network, n) for n in ("STAT_WRONG_PASSWORD", "STAT_NO_AP_FOUND",
                                                "STAT_CONNECT_FAIL", "STAT_BEACON_TIMEOUT")
                 if hasattr(network, n))


def _jitter(n):
    import os

    if n <= 0:
        return 0
    return int.from_bytes(os.urandom(2), "big") % n


def _hex(b):
    return "".join("%02x" % x for x in b)
