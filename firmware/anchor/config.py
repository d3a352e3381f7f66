# Device configuration on flash: a dict of defaults overridden by a JSON file (/anchor.json on
# a board). `iot-anchor device provision` writes that file; a person can also edit it with
# `mpremote edit :anchor.json`. Unknown keys are an error, so a typo does not silently fall back
# to a default.
import json

PATH = "/anchor.json"

DEFAULTS = {
    "id": None,  # device id; None = machine.unique_id() in hex
    "wifi_ssid": "",
    "wifi_password": "",
    "broker": "mqtt://192.168.1.10:1883",
    "interval": 60,  # seconds between readings
    "sensors": ["mcu"],  # "mcu" (the chip's own sensor), "bme280"
    "i2c": 0,  # I2C bus id for the BME280
    "scl": None,  # pin numbers; None = the port's default pins for that bus
    "sda": None,
    "bme280_addr": 0x76,
    "led": None,  # status LED pin (number or name such as "LED"); None = no LED
    "led_active_low": False,
    "watchdog_ms": 8000,  # 0 = no watchdog; RP2 allows at most 8388
    "ntp_host": "pool.ntp.org",
    "ntp_resync": 3600,  # seconds between clock re-syncs
    "dir": "data",  # key, seq state and outbox, relative to the board's root (/data)
    "board": None,  # board layer: None = by sys.platform; "esp32", "rp2", "unix" to choose
    # outputs the gateway's `output` command switches: name -> GPIO pin (number or name), or
    # {"pin": PIN, "active_low": true} (anchor/downlink_cmd.py)
    "outputs": {},
}

_TYPES = {
    "id": (str, type(None)),
    "wifi_ssid": (str,),
    "wifi_password": (str,),
    "broker": (str,),
    "interval": (int, float),
    "sensors": (list,),
    "i2c": (int,),
    "scl": (int, type(None)),
    "sda": (int, type(None)),
    "bme280_addr": (int,),
    "led": (int, str, type(None)),
    "led_active_low": (bool,),
    "watchdog_ms": (int,),
    "ntp_host": (str,),
    "ntp_resync": (int, float),
    "dir": (str,),
    "board": (str, type(None)),
    "outputs": (dict,),
}

SENSORS = ("mcu", "bme280")
BOARDS = ("esp32", "rp2", "unix")


def merge(overrides):
    """DEFAULTS overridden by `overrides`; raises ValueError naming the bad key."""
    cfg = dict(DEFAULTS)
    for k, v in overrides.items():
        if k not in DEFAULTS:
            raise ValueError("unknown config key %r; known keys: %s"
                             % (k, ", ".join(sorted(DEFAULTS))))
        if not isinstance(v, _TYPES[k]) or (isinstance(v, bool) and bool not in _TYPES[k]):
            raise ValueError("config key %r has the wrong type (%s)" % (k, type(v).__name__))
        cfg[k] = v
    for s in cfg["sensors"]:
        if s not in SENSORS:
            raise ValueError("unknown sensor %r in config; use %s" % (s, ", ".join(SENSORS)))
    if cfg["board"] is not None and cfg["board"] not in BOARDS:
        raise ValueError("unknown board %r in config; use %s" % (cfg["board"], ", ".join(BOARDS)))
    if cfg["interval"] <= 0:
        raise ValueError("config interval must be > 0 seconds")
    return cfg


def load(path=PATH):
    """The configuration from `path` over DEFAULTS. A missing file gives the defaults."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return merge({})
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError("%s is not valid JSON; fix it or provision the board again" % path)
    if not isinstance(data, dict):
        raise ValueError("%s must hold a JSON object" % path)
    return merge(data)


def save(cfg, path=PATH):
    """Write only the keys that differ from DEFAULTS (small file, defaults can evolve)."""
    out = {}
    for k, v in cfg.items():
        if DEFAULTS.get(k, out) != v:
            out[k] = v
    merge(out)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(out))
    import os

    os.rename(tmp, path)
