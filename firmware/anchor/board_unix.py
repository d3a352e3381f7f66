# Unix board layer (Linux, macOS: the MicroPython Unix port). A real layer, not a mock: files on
# disk, the host's network, a real or simulated sensor, the host clock.
#
# The board interface (anchor/device.py uses only this; board_esp32.py and board_rp2.py, via
# board_net.NetBoard, implement the same names; anchor/board.py picks one by sys.platform):
#
#   Board(cfg)              cfg: a dict as from anchor/config.py (keys used here: "id", "dir",
#                           "sensors" is ignored on Unix); extra keys are ignored
#   .name                   "unix", "esp32", "rp2"
#   .device_id()            the configured id, or None to keep the id from the device's key
#                           (boards return a default id from machine.unique_id())
#   .data_dir()             the directory for key, seq state and outbox
#   .time()                 int unix seconds, or None while the clock is unset (boards: before
#                           the first NTP sync; ESP32's 2000 epoch already converted)
#   .read_sensors()         dict sensor name -> int|float; a failed sensor is left out; {} is
#                           allowed (the reading then carries an empty data map)
#   async .network_up()     return once the network is usable (Wi-Fi joined, clock synced when
#                           due); retries by itself, never raises
#   .online()               True while the network is up
#   .start_watchdog()       arm the hardware watchdog (cfg "watchdog_ms"); the loop then calls
#   .feed()                 at least every few seconds
#   .led(on)                status LED (on = busy/connecting), a no-op without one
#   async .sleep_fed(ms)    sleep, feeding the watchdog meanwhile
#
# Sensor on Unix: /sys/class/thermal/thermal_zone*/temp (millidegrees C, the CPU temperature of
# a laptop or a Raspberry Pi) as "cpu_temp" when a zone is readable; otherwise "temp", a
# simulated room temperature: a base between 18 and 24 C chosen by the device id, a slow sine
# (one cycle per 10 minutes, +-1.5 C) and noise of +-0.1 C from a generator seeded by the id, so
# each simulated device has its own plausible, reproducible curve. Values rounded to 0.01 C.

import math
import os
import time

from micropython import const

from anchor.state import unix_time

_THERMAL = "/sys/class/thermal"
_PERIOD_S = const(600)


def _fnv1a(s):
    h = 2166136261
    for c in s.encode() if isinstance(s, str) else s:
        h = ((h ^ c) * 16777619) & 0xFFFFFFFF
    return h


def find_thermal_zone(root=_THERMAL):
    """Path of the first readable thermal_zone*/temp under root, or None."""
    try:
        names = sorted(n for n in os.listdir(root) if n.startswith("thermal_zone"))
    except OSError:
        return None
    for n in names:
        p = "%s/%s/temp" % (root, n)
        if _read_millideg(p) is not None:
            return p
    return None


def _read_millideg(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


class Board:
    name = "unix"

    def __init__(self, cfg, thermal_root=_THERMAL):
        self.cfg = cfg
        self.thermal = find_thermal_zone(thermal_root)
        self._seed = None
        self._noise = 0
        self._t0 = time.time()
        self.sensor_errors = 0
        self.led_on = False

    # -- identity and storage ------------------------------------------------------------

    def device_id(self):
        return self.cfg.get("id")

    def data_dir(self):
        return self.cfg["dir"]

    # -- clock -----------------------------------------------------------------------------

    def time(self):
        return unix_time()      # the host clock; None before 2024 (not set)

    # -- network, watchdog, LED: the host's; nothing to do ------------------------------

    async def network_up(self):
        return None

    def online(self):
        return True

    def start_watchdog(self):
        pass

    def feed(self):
        pass

    def led(self, on):
        self.led_on = bool(on)

    async def sleep_fed(self, ms):
        import asyncio

        await asyncio.sleep_ms(int(ms))

    # -- sensors ---------------------------------------------------------------------------

    def seed(self, dev_id):
        """Seed the simulated signal (the device loop calls this with the device id)."""
        self._seed = _fnv1a(dev_id)
        self._noise = self._seed or 1

    def read_sensors(self):
        if self.thermal is not None:
            m = _read_millideg(self.thermal)
            if m is not None:
                return {"cpu_temp": round(m / 1000, 2)}
            self.sensor_errors += 1
        return {"temp": self.simulated(time.time())}

    def simulated(self, t):
        if self._seed is None:
            self.seed(self.cfg.get("id") or "unix")
        s = self._seed
        base = 18 + (s % 601) / 100                      # 18.00 .. 24.00 C
        phase = (s >> 10) % 360 * math.pi / 180
        # xorshift32 for the noise: cheap, same on every port
        x = self._noise
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self._noise = x
        noise = (x % 201 - 100) / 1000                    # -0.1 .. +0.1 C
        v = base + 1.5 * math.sin(2 * math.pi * (t % _PERIOD_S) / _PERIOD_S + phase) + noise
        return round(v, 2)
