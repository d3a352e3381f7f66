# Stand-in for MicroPython's `machine` module on ESP32 / RP2 boards (tests only, Unix port).
# Behaviour follows the MicroPython 1.25 docs and port sources; see README.md here.
import errno
import time

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5


class _Sim:
    def __init__(self):
        self.flavour("esp32")
        # channel -> u16 value (int) or a callable returning one; channel 4 (RP2040 temperature
        # sensor) reads 0.706 V, i.e. 27 degC, until a test sets it
        self.adc = {4: 14020}
        self.i2c = {}  # address -> device object: read(reg, n) -> bytes, write(reg, data)
        self.pin_log = []  # (pin id, value) for every output write
        self.pins = {}
        self.wdt = None
        self.wdt_fed = 0  # ticks_ms of the watchdog's last feed (or its start)
        self.wdt_bites = 0  # times the real watchdog would have reset the chip
        self.resets = 0
        self.reset_cause = PWRON_RESET
        self._rtc_base = None  # port-epoch seconds at _rtc_set_ms, None = never set
        self._rtc_set_ms = 0
        self._boot_ms = time.ticks_ms()

    def flavour(self, name):
        self.name = name
        if name == "rp2":
            self.uid = b"\xe6\x61\x41\x04\x03\x2b\x6c\x2a"  # 8-byte flash unique id
            self.wdt_max = 8388  # ports/rp2/machine_wdt.c WDT_TIMEOUT_MAX
            self.i2c_errno = errno.EIO  # rp2 reports a missing device as EIO
            self.epoch_year = 1970
        else:
            self.uid = b"\x24\x0a\xc4\x5e\x1c\x08"  # 6-byte base MAC
            self.wdt_max = None
            self.i2c_errno = errno.ENODEV
            self.epoch_year = 2000

    # The board's RTC, in seconds since the port's epoch. Unset (0) at power-on, as on a
    # board whose RTC has no battery.
    def rtc_seconds(self):
        if self._rtc_base is None:
            # counts up from 0 (the port's epoch) since "power-on"
            return time.ticks_diff(time.ticks_ms(), self._boot_ms) // 1000
        return self._rtc_base + time.ticks_diff(time.ticks_ms(), self._rtc_set_ms) // 1000

    def set_rtc_seconds(self, secs):
        self._rtc_base = int(secs)
        self._rtc_set_ms = time.ticks_ms()

    def check_wdt(self):
        """True when the watchdog has not been fed within its timeout right now."""
        w = self.wdt
        return w is not None and time.ticks_diff(time.ticks_ms(), self.wdt_fed) > w.timeout


sim = _Sim()


def unique_id():
    return sim.uid


def reset():
    sim.resets += 1
    raise SystemExit("machine.reset")


def soft_reset():
    raise SystemExit("machine.soft_reset")


def reset_cause():
    return sim.reset_cause


def idle():
    pass


def freq(*args):
    return 240000000 if sim.name != "rp2" else 125000000


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 1
    PULL_DOWN = 2

    def __init__(self, id, mode=-1, pull=-1, *, value=None):
        if isinstance(id, str) and id not in ("LED", "WL_GPIO0"):
            raise ValueError("invalid pin")
        self.id = id
        self._mode = mode
        if value is not None:
            self.value(value)

    def init(self, mode=-1, pull=-1, *, value=None):
        self._mode = mode
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            return sim.pins.get(self.id, 0)
        v = 1 if v else 0
        sim.pins[self.id] = v
        sim.pin_log.append((self.id, v))
        return None

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def toggle(self):
        self.value(1 - self.value())


class ADC:
    CORE_TEMP = 4  # rp2: the internal temperature sensor's channel

    def __init__(self, id, **kw):
        if isinstance(id, Pin):
            id = id.id
        if sim.name == "rp2" and not (0 <= id <= 4 or 26 <= id <= 29):
            raise ValueError("invalid ADC channel")
        self.ch = id

    def read_u16(self):
        v = sim.adc.get(self.ch)
        if v is None:
            return 0  # a floating input reads near 0
        if callable(v):
            v = v()
        return int(v) & 0xFFFF


class WDT:
    def __init__(self, id=0, timeout=5000):
        if id != 0:
            raise ValueError
        if timeout <= 0:
            raise ValueError("WDT timeout too short")
        if sim.wdt_max is not None and timeout > sim.wdt_max:
            raise ValueError(f"timeout exceeds {sim.wdt_max}")
        self.timeout = timeout
        sim.wdt = self
        sim.wdt_fed = time.ticks_ms()

    def feed(self):
        if time.ticks_diff(time.ticks_ms(), sim.wdt_fed) > self.timeout:
            sim.wdt_bites += 1  # the real chip would have reset before this feed
        sim.wdt_fed = time.ticks_ms()


class I2C:
    def __init__(self, id=0, *, scl=None, sda=None, freq=400000, timeout=50000):
        self.id = id
        self.scl = scl
        self.sda = sda
        self.freq = freq

    def _dev(self, addr):
        d = sim.i2c.get(addr)
        if d is None:
            raise OSError(sim.i2c_errno)
        return d

    def scan(self):
        return sorted(sim.i2c)

    def readfrom_mem(self, addr, memaddr, nbytes, *, addrsize=8):
        return bytes(self._dev(addr).read(memaddr, nbytes))

    def readfrom_mem_into(self, addr, memaddr, buf, *, addrsize=8):
        data = self._dev(addr).read(memaddr, len(buf))
        for i in range(len(buf)):
            buf[i] = data[i]

    def writeto_mem(self, addr, memaddr, buf, *, addrsize=8):
        self._dev(addr).write(memaddr, bytes(buf))


SoftI2C = I2C


class RTC:
    def datetime(self, dt=None):
        if dt is None:
            t = time.gmtime(_to_unix(sim.rtc_seconds()))
            # (year, month, day, weekday, hours, minutes, seconds, subseconds)
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)
        y, mo, d, _wd, h, mi, s = dt[:7]
        unix = _days_unix(y, mo, d, h, mi, s)
        sim.set_rtc_seconds(unix - (946684800 if sim.epoch_year == 2000 else 0))


def _to_unix(port_secs):
    return port_secs + (946684800 if sim.epoch_year == 2000 else 0)


def _days_unix(y, mo, d, h, mi, s):
    # days from civil (proleptic Gregorian), UTC, independent of the host's time zone
    y2 = y - (mo <= 2)
    era = y2 // 400
    yoe = y2 - era * 400
    doy = (153 * (mo + (-3 if mo > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return days * 86400 + h * 3600 + mi * 60 + s
